package device

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// X509 is X.509 attestation (docs/protocol.md section 8): the device presents its
// certificate, and the chain up to (not necessarily including) the CA its
// enrollment group names, in the TLS handshake and sends no password. The
// leaf's subject CN is the registration id. It needs TLS or WebSocket: over
// plain TCP (TransportTCP) there is no handshake to carry the certificate.
type X509 struct {
	// Certificate is the device's key pair; Certificate.Certificate holds the
	// DER chain, leaf first. Its private key is a secret.
	Certificate tls.Certificate
}

// NewX509 builds an X509 attestation from PEM: certPEM holds the device
// certificate, optionally followed by its intermediates; keyPEM its private
// key. Errors wrap ErrInvalidConfig.
func NewX509(certPEM, keyPEM []byte) (*X509, error) {
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: X.509 certificate and key: %w", ErrInvalidConfig, err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("%w: X.509 device certificate: %w", ErrInvalidConfig, err)
	}
	c.Leaf = leaf
	return &X509{Certificate: c}, nil
}

// LoadX509 reads NewX509's PEM from files (the key file should be 0600).
func LoadX509(certFile, keyFile string) (*X509, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("%w: read certificate: %w", ErrInvalidConfig, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: read key: %w", ErrInvalidConfig, err)
	}
	return NewX509(certPEM, keyPEM)
}

// Credentials returns the client certificate and no password.
func (x *X509) Credentials(_ context.Context, _ Session) (Credentials, error) {
	if len(x.Certificate.Certificate) == 0 || x.Certificate.PrivateKey == nil {
		return Credentials{}, errors.New("device: X.509 attestation has no certificate or key")
	}
	c := x.Certificate
	return Credentials{Certificate: &c}, nil
}

// DefaultRegistrationID returns the device certificate's subject CN, which
// the service requires to equal the registration id (IDProvider).
func (x *X509) DefaultRegistrationID(_ context.Context) (string, error) {
	leaf := x.Certificate.Leaf
	if leaf == nil {
		if len(x.Certificate.Certificate) == 0 {
			return "", errors.New("device: X.509 attestation has no certificate")
		}
		var err error
		if leaf, err = x509.ParseCertificate(x.Certificate.Certificate[0]); err != nil {
			return "", fmt.Errorf("device: X.509 device certificate: %w", err)
		}
	}
	if leaf.Subject.CommonName == "" {
		return "", errors.New("device: X.509 device certificate has no subject CN")
	}
	return leaf.Subject.CommonName, nil
}
