package attest

// X.509 certificates as the service API records them (docs/protocol.md
// section 8): the chain and pin checks themselves are in provision.

import (
	"crypto/x509"
	"errors"
	"fmt"
)

// MaxCertificateLength bounds a certificate given as text (PEM or base64 DER).
const MaxCertificateLength = 64 << 10

// ErrBadCertificate means text is not one certificate in PEM or base64 DER.
// It is wrapped with the reason; test with errors.Is.
var ErrBadCertificate = errors.New("attest: bad certificate")

// ParseCertificate reads one certificate given as PEM (a single CERTIFICATE
// block) or as base64 DER, the two forms the DPS service API accepts.
func ParseCertificate(s string) (*x509.Certificate, error) {
	der, err := decodePEMOrBase64(s, "CERTIFICATE", MaxCertificateLength)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCertificate, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCertificate, err)
	}
	return cert, nil
}
