package devca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"time"
)

// Certificates for X.509 attestation: CA hierarchies that may hold
// intermediates, and device (client) certificates whose subject CN is the
// registration id. Tests and demos use them; they are ordinary certificates.

// NewRootCA creates a self-signed CA, valid from now-1h for validity, that may
// sign up to maxPathLen levels of intermediate CAs below it (0: none, as
// NewCA). Device CA hierarchies (root, intermediate, device) need 1.
func NewRootCA(commonName string, now time.Time, validity time.Duration, maxPathLen int) (*CA, error) {
	if maxPathLen < 0 {
		return nil, errors.New("devca: negative maxPathLen")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("devca: generating CA key: %w", err)
	}
	tmpl := caTemplate(commonName, now.Add(-time.Hour), now.Add(validity), maxPathLen)
	return createCA(tmpl, tmpl, key, key)
}

// NewIntermediate creates an intermediate CA signed by ca, valid from now-1h
// for validity (capped at ca's own expiry), that signs end-entity
// certificates only.
func (ca *CA) NewIntermediate(commonName string, now time.Time, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("devca: generating intermediate key: %w", err)
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := caTemplate(commonName, now.Add(-time.Hour), notAfter, 0)
	return createCA(tmpl, ca.Cert, key, ca.Key)
}

// caTemplate is the template of a CA certificate.
func caTemplate(commonName string, notBefore, notAfter time.Time, maxPathLen int) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"dpsd development"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
	}
}

// createCA signs tmpl with signerKey (as parent) and returns the new CA.
func createCA(tmpl, parent *x509.Certificate, key, signerKey *ecdsa.PrivateKey) (*CA, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signerKey)
	if err != nil {
		return nil, fmt.Errorf("devca: creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("devca: parsing CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// IssueClient makes a device certificate for X.509 attestation: subject CN
// = commonName (the registration id), client-auth key usage, valid from
// notBefore to notAfter exactly (tests pass expired or not-yet-valid
// periods on purpose), signed by the CA. It returns the leaf and its key as PEM.
func (ca *CA) IssueClient(commonName string, notBefore, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("devca: generating client key: %w", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, clientTemplate(commonName, notBefore, notAfter), ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("devca: creating client certificate: %w", err)
	}
	keyPEM, err = EncodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return EncodeCert(der), keyPEM, nil
}

// SelfSignedClient makes a self-signed device certificate (CN = commonName,
// client-auth key usage), the kind an individual X.509 enrollment pins.
func SelfSignedClient(commonName string, notBefore, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("devca: generating client key: %w", err)
	}
	tmpl := clientTemplate(commonName, notBefore, notAfter)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("devca: creating client certificate: %w", err)
	}
	keyPEM, err = EncodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return EncodeCert(der), keyPEM, nil
}

// clientTemplate is the template of a device certificate.
func clientTemplate(commonName string, notBefore, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: commonName},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}
