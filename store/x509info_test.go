package store_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // the oracle of SHA-1 thumbprints
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// selfSigned returns a fresh self-signed certificate.
func selfSigned(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(0xabc123), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// colons prints hex in pairs separated by sep, as tools print thumbprints.
func colons(hexText, sep string) string {
	var parts []string
	for i := 0; i < len(hexText); i += 2 {
		parts = append(parts, hexText[i:i+2])
	}
	return strings.Join(parts, sep)
}

// TestCertificateThumbprints: upper-case hex of the DER's SHA-1 and
// SHA-256, and the info of a certificate holds exactly those.
func TestCertificateThumbprints(t *testing.T) {
	c := selfSigned(t, "dev")
	s1, s256 := store.CertificateThumbprints(c)
	if want := fmt.Sprintf("%X", sha1.Sum(c.Raw)); s1 != want { //nolint:gosec // oracle
		t.Fatalf("sha1 %s, want %s", s1, want)
	}
	if want := fmt.Sprintf("%X", sha256.Sum256(c.Raw)); s256 != want {
		t.Fatalf("sha256 %s, want %s", s256, want)
	}
	info := store.NewX509CertificateInfo(c)
	if info.SHA1Thumbprint != s1 || info.SHA256Thumbprint != s256 || info.SerialNumber != "ABC123" || info.SubjectName != "CN=dev" {
		t.Fatalf("info %+v", info)
	}
}

// TestMatchesCertificate: a recorded SHA-256 rules (in any case, with
// separators); SHA-1 is used only when no SHA-256 is recorded; an empty
// info matches nothing.
func TestMatchesCertificate(t *testing.T) {
	c, other := selfSigned(t, "dev"), selfSigned(t, "other")
	s1, s256 := store.CertificateThumbprints(c)
	o1, o256 := store.CertificateThumbprints(other)
	for _, k := range []struct {
		name string
		info store.X509CertificateInfo
		want bool
	}{
		{"sha256", store.X509CertificateInfo{SHA256Thumbprint: s256}, true},
		{"sha256 lower case with colons", store.X509CertificateInfo{SHA256Thumbprint: " " + colons(strings.ToLower(s256), ":") + " "}, true},
		{"sha256 with spaces", store.X509CertificateInfo{SHA256Thumbprint: colons(s256, " ")}, true},
		{"sha1 with hyphens", store.X509CertificateInfo{SHA1Thumbprint: colons(strings.ToLower(s1), "-")}, true},
		{"both", store.X509CertificateInfo{SHA1Thumbprint: s1, SHA256Thumbprint: s256}, true},
		{"another sha256 beside a matching sha1", store.X509CertificateInfo{SHA1Thumbprint: s1, SHA256Thumbprint: o256}, false},
		{"another sha256", store.X509CertificateInfo{SHA256Thumbprint: o256}, false},
		{"another sha1", store.X509CertificateInfo{SHA1Thumbprint: o1}, false},
		{"a prefix of the sha256", store.X509CertificateInfo{SHA256Thumbprint: s256[:40]}, false},
		{"nothing", store.X509CertificateInfo{}, false},
	} {
		if got := k.info.MatchesCertificate(c); got != k.want {
			t.Errorf("%s: %v, want %v", k.name, got, k.want)
		}
	}
}
