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

func TestClientHierarchy(t *testing.T) {
	now := time.Now()
	root, err := NewRootCA("device root", now, 24*time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate("device intermediate", now, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !inter.Cert.NotAfter.Equal(root.Cert.NotAfter) {
		t.Errorf("intermediate outlives its root: %v > %v", inter.Cert.NotAfter, root.Cert.NotAfter)
	}
	certPEM, keyPEM, err := inter.IssueClient("Dev-1", now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatalf("key pair: %v", err)
	}
	leaf, err := ParseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "Dev-1" {
		t.Errorf("CN %q", leaf.Subject.CommonName)
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root.Cert)
	inters.AddCert(inter.Cert)
	opts := x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := leaf.Verify(opts); err != nil {
		t.Fatalf("verify through the intermediate: %v", err)
	}
	// A root made by NewCA (path length 0) cannot vouch for an intermediate.
	flat, err := NewCA("flat", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	inter2, err := flat.NewIntermediate("under flat", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c2PEM, _, err := inter2.IssueClient("dev-2", now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := ParseCert(c2PEM)
	flatRoots, flatInters := x509.NewCertPool(), x509.NewCertPool()
	flatRoots.AddCert(flat.Cert)
	flatInters.AddCert(inter2.Cert)
	if _, err := c2.Verify(x509.VerifyOptions{Roots: flatRoots, Intermediates: flatInters, KeyUsages: opts.KeyUsages}); err == nil {
		t.Fatal("path length 0 root verified a chain with an intermediate")
	}
	if _, err := NewRootCA("bad", now, time.Hour, -1); err == nil {
		t.Fatal("negative path length accepted")
	}
}

func TestSelfSignedClient(t *testing.T) {
	now := time.Now()
	certPEM, keyPEM, err := SelfSignedClient("dev-ss", now.Add(-time.Hour), now.Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	c, err := ParseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if c.IsCA || c.Subject.CommonName != "dev-ss" || !c.NotAfter.Before(now) {
		t.Fatalf("certificate: CA %v CN %q notAfter %v", c.IsCA, c.Subject.CommonName, c.NotAfter)
	}
	if err := c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature); err != nil {
		t.Fatalf("not self-signed: %v", err)
	}
}
