package store

import (
	"crypto/sha1" //nolint:gosec // SHA-1 thumbprints are part of the DPS record; reported and matched, never trusted alone
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"strings"
)

// NewX509CertificateInfo describes cert the way the DPS API reports it:
// subject and issuer, its thumbprints (CertificateThumbprints), validity in
// UTC, upper-case hex serial number and version.
func NewX509CertificateInfo(cert *x509.Certificate) *X509CertificateInfo {
	sha1Hex, sha256Hex := CertificateThumbprints(cert)
	return &X509CertificateInfo{
		SubjectName:      cert.Subject.String(),
		SHA1Thumbprint:   sha1Hex,
		SHA256Thumbprint: sha256Hex,
		IssuerName:       cert.Issuer.String(),
		NotBefore:        cert.NotBefore.UTC(),
		NotAfter:         cert.NotAfter.UTC(),
		SerialNumber:     strings.ToUpper(cert.SerialNumber.Text(16)),
		Version:          cert.Version,
	}
}

// CertificateThumbprints returns the SHA-1 and SHA-256 thumbprints of
// cert as DPS records hold them: upper-case hex of the hash of its DER. It
// is the one place the service computes a thumbprint.
func CertificateThumbprints(cert *x509.Certificate) (sha1Hex, sha256Hex string) {
	s1 := sha1.Sum(cert.Raw) //nolint:gosec // see import
	s256 := sha256.Sum256(cert.Raw)
	return strings.ToUpper(hex.EncodeToString(s1[:])), strings.ToUpper(hex.EncodeToString(s256[:]))
}

// MatchesCertificate reports whether cert has the thumbprint recorded in
// i: its SHA-256 thumbprint when i records one (a SHA-1 beside it is then
// ignored), else its SHA-1. A recorded thumbprint may be in either case and
// carry the separators tools print (colons, spaces, hyphens). An info that
// records neither matches nothing.
func (i *X509CertificateInfo) MatchesCertificate(cert *x509.Certificate) bool {
	sha1Hex, sha256Hex := CertificateThumbprints(cert)
	if t := normThumbprint(i.SHA256Thumbprint); t != "" {
		return t == sha256Hex
	}
	t := normThumbprint(i.SHA1Thumbprint)
	return t != "" && t == sha1Hex
}

// normThumbprint upper-cases a recorded thumbprint and drops separators.
func normThumbprint(t string) string {
	t = strings.NewReplacer(":", "", " ", "", "-", "").Replace(strings.TrimSpace(t))
	return strings.ToUpper(t)
}
