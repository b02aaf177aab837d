package devca

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

func TestIssueAndVerify(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("test CA", now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue([]string{"localhost", "127.0.0.1"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ParseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, name := range []string{"localhost", "127.0.0.1"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: name}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if !ca.Covers(cert, []string{"127.0.0.1", "LOCALHOST"}, now, 0) {
		t.Error("Covers must accept the same names in another order and case")
	}
	if ca.Covers(cert, []string{"localhost"}, now, 0) {
		t.Error("Covers must refuse changed names")
	}
	if ca.Covers(cert, []string{"localhost", "127.0.0.1"}, now.Add(2*time.Hour), 0) {
		t.Error("Covers must refuse an expired certificate")
	}
	other, _ := NewCA("other", now, time.Hour)
	if other.Covers(cert, []string{"localhost", "127.0.0.1"}, now, 0) {
		t.Error("Covers must refuse a certificate of another CA")
	}
	if _, err := TLSConfig(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	kp, _ := ca.KeyPEM()
	back, err := ParseCA(ca.CertPEM(), kp)
	if err != nil || !back.Cert.Equal(ca.Cert) {
		t.Fatalf("ParseCA round trip: %v", err)
	}
	okp, _ := other.KeyPEM()
	if _, err := ParseCA(ca.CertPEM(), okp); !errors.Is(err, ErrBadPEM) {
		t.Fatalf("mismatched key: %v", err)
	}
	if _, err := ParseCert([]byte("junk")); !errors.Is(err, ErrBadPEM) {
		t.Fatalf("junk: %v", err)
	}
	_ = tls.VersionTLS12
}
