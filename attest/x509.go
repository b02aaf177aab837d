package attest

// X.509 certificates as the service API records them (docs/protocol.md
// section 8): the chain and pin checks themselves are in provision.

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// MaxCertificateLength bounds a certificate given as text (PEM or base64 DER).
const MaxCertificateLength = 64 << 10

// ErrBadCertificate means text is not one certificate in PEM or base64 DER.
// It is wrapped with the reason; test with errors.Is.
var ErrBadCertificate = errors.New("attest: bad certificate")

// ParseCertificate reads one certificate given as PEM (a single CERTIFICATE
// block) or as base64 DER, the two forms the DPS service API accepts.
func ParseCertificate(s string) (*x509.Certificate, error) {
	s = strings.TrimSpace(s)
	if len(s) > MaxCertificateLength {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadCertificate, MaxCertificateLength)
	}
	var der []byte
	if strings.HasPrefix(s, "-----BEGIN") {
		blk, rest := pem.Decode([]byte(s))
		if blk == nil || blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: no PEM CERTIFICATE block", ErrBadCertificate)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("%w: more than one PEM block", ErrBadCertificate)
		}
		der = blk.Bytes
	} else {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("%w: neither PEM nor base64 DER: %w", ErrBadCertificate, err)
		}
		der = b
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCertificate, err)
	}
	return cert, nil
}
