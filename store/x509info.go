package store

import (
	"crypto/sha1" //nolint:gosec // SHA-1 thumbprints are part of the DPS record; reported, never trusted alone
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"strings"
)

// NewX509CertificateInfo describes cert the way the DPS API reports it:
// subject and issuer, upper-case hex SHA-1 and SHA-256 thumbprints of the
// DER, validity in UTC, upper-case hex serial number and version.
func NewX509CertificateInfo(cert *x509.Certificate) *X509CertificateInfo {
	s1 := sha1.Sum(cert.Raw) //nolint:gosec // see import
	s256 := sha256.Sum256(cert.Raw)
	return &X509CertificateInfo{
		SubjectName:      cert.Subject.String(),
		SHA1Thumbprint:   strings.ToUpper(hex.EncodeToString(s1[:])),
		SHA256Thumbprint: strings.ToUpper(hex.EncodeToString(s256[:])),
		IssuerName:       cert.Issuer.String(),
		NotBefore:        cert.NotBefore.UTC(),
		NotAfter:         cert.NotAfter.UTC(),
		SerialNumber:     strings.ToUpper(cert.SerialNumber.Text(16)),
		Version:          cert.Version,
	}
}
