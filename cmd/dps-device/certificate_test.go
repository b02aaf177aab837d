package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/device/tpmtransport"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/internal/swtpmtest"
	"github.com/tpmdps/dpsd/issuer"
	"github.com/tpmdps/dpsd/store"
)

// issuingServer starts the in-process server with a built-in CA.
func issuingServer(t *testing.T) (*dpsdtest.Server, *issuer.CA) {
	t.Helper()
	ca, err := issuer.NewCA(issuer.KeyECDSAP256, pkix.Name{CommonName: "dps-device test issuing CA"}, time.Now(), 24*time.Hour*365)
	if err != nil {
		t.Fatal(err)
	}
	return dpsdtest.Start(t, dpsdtest.Options{RetryAfter: -1, Issuer: ca}), ca
}

// readLeaf reads --cert-out: exactly one certificate (the built-in CA is
// a root, which the file leaves out).
func readLeaf(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, rest := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) != 0 {
		t.Fatalf("%s is not one PEM certificate: %q", path, data)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// provisionOut decodes what provision printed.
func provisionOut(t *testing.T, out string) provisionOutput {
	t.Helper()
	var o provisionOutput
	if err := json.Unmarshal([]byte(out), &o); err != nil || o.Result == nil {
		t.Fatalf("provision output %q: %v", out, err)
	}
	return o
}

// TestProvisionIssueCertTPM: on a swtpm, --issue-cert makes the key in the
// TPM, persists it at the default handle once the certificate is issued,
// and writes the certificate; a second run renews: a new key at the same
// handle, a new certificate, the old serial superseded.
func TestProvisionIssueCertTPM(t *testing.T) {
	srv, ca := issuingServer(t)
	sw := swtpmtest.Start(t)
	_, ekJSON, _ := runCmd(t, "ek", "--tpm", sw.Selector())
	e, _ := parseEK(t, ekJSON)
	enrollFromEK(t, srv, e, store.StatusEnabled)
	en, _ := srv.Store.GetEnrollment(context.Background(), e.RegistrationID)
	en.CredentialPolicyName = "tpm-devices"
	if _, err := srv.Store.PutEnrollment(context.Background(), en, ""); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(srv.TCPAddr)
	certFile := filepath.Join(t.TempDir(), "dev.pem")
	args := []string{"provision", "--host", host, "--port", port, "--id-scope", srv.IDScope, "--plain", "--tpm", sw.Selector(),
		"--issue-cert", "--cert-out", certFile, "--timeout", "60s"}
	var serials []string
	for round := range 2 {
		code, out, stderr := runCmd(t, args...)
		if code != 0 {
			t.Fatalf("round %d: exit %d: %s", round, code, stderr)
		}
		o := provisionOut(t, out)
		leaf := readLeaf(t, certFile)
		if o.CertificateFile != certFile || o.CertificateKeyHandle != "0x81000102" || o.CertificateKeyFile != "" ||
			o.IssuedCertificate == nil || o.IssuedCertificate.SerialNumber != strings.ToUpper(leaf.SerialNumber.Text(16)) {
			t.Fatalf("round %d: output %s", round, out)
		}
		roots := x509.NewCertPool()
		roots.AddCert(ca.Certificate())
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		tpm, err := tpmtransport.Open(context.Background(), sw.Selector())
		if err != nil {
			t.Fatal(err)
		}
		key, err := devtpm.OpenSigningKey(tpm, devtpm.CertKeyHandle)
		if err != nil {
			tpm.Close()
			t.Fatalf("round %d: no key at the handle: %v", round, err)
		}
		if !key.Public().(*ecdsa.PublicKey).Equal(leaf.PublicKey) {
			t.Fatalf("round %d: the persisted key is not the certificate's", round)
		}
		// The pair works as a TLS client credential: a handshake signs with
		// the key in the TPM.
		tlsClientHandshake(t, tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}, ca.Certificate())
		tpm.Close()
		serials = append(serials, o.IssuedCertificate.SerialNumber)
	}
	rec, err := srv.Store.GetRegistration(context.Background(), e.RegistrationID)
	if err != nil || rec.Certificate.SerialNumber != serials[1] || len(rec.SupersededCertificates) != 1 || rec.SupersededCertificates[0].SerialNumber != serials[0] {
		t.Fatalf("after the renewal: %+v, %v", rec, err)
	}
}

// TestProvisionIssueCertSoftwareKey: a symmetric-key device without a TPM
// writes its key (0600) and certificate; a device the service issues
// nothing to fails with exit 2 and writes neither.
func TestProvisionIssueCertSoftwareKey(t *testing.T) {
	srv, ca := issuingServer(t)
	key := []byte("0123456789abcdef0123456789abcdef")
	for id, policy := range map[string]string{"soft-1": "default", "soft-no": ""} {
		en := &store.Enrollment{RegistrationID: id, EnrollmentSettings: store.EnrollmentSettings{
			Attestation:          store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(key)}},
			CredentialPolicyName: policy,
		}}
		if _, err := srv.Store.PutEnrollment(context.Background(), en, ""); err != nil {
			t.Fatal(err)
		}
	}
	host, port, _ := net.SplitHostPort(srv.TCPAddr)
	dir := t.TempDir()
	args := func(id string) []string {
		return []string{"provision", "--host", host, "--port", port, "--id-scope", srv.IDScope, "--plain", "--registration-id", id,
			"--symmetric-key", base64.StdEncoding.EncodeToString(key), "--issue-cert", "--cert-out", filepath.Join(dir, id+".pem"),
			"--key-out", filepath.Join(dir, id+".key"), "--cert-key-type", "rsa-2048", "--timeout", "30s"}
	}
	code, out, stderr := runCmd(t, args("soft-1")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	o := provisionOut(t, out)
	if o.CertificateKeyFile != filepath.Join(dir, "soft-1.key") || o.CertificateKeyHandle != "" {
		t.Fatalf("output %s", out)
	}
	fi, err := os.Stat(o.CertificateKeyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	pair, err := tls.LoadX509KeyPair(o.CertificateFile, o.CertificateKeyFile)
	if err != nil {
		t.Fatalf("certificate and key do not pair: %v", err)
	}
	if pair.Leaf.PublicKeyAlgorithm != x509.RSA || pair.Leaf.Subject.CommonName != "soft-1" {
		t.Fatalf("leaf %v %s", pair.Leaf.PublicKeyAlgorithm, pair.Leaf.Subject)
	}
	tlsClientHandshake(t, pair, ca.Certificate())

	code, _, stderr = runCmd(t, args("soft-no")...)
	if code != exitRefused || !strings.Contains(stderr, "400000") || !strings.Contains(stderr, "not configured") {
		t.Fatalf("not issued: exit %d: %s", code, stderr)
	}
	for _, f := range []string{"soft-no.pem", "soft-no.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s written after a refusal: %v", f, err)
		}
	}
}

func TestProvisionIssueCertUsage(t *testing.T) {
	base := []string{"provision", "--host", "h", "--id-scope", "s"}
	for _, extra := range [][]string{
		{"--issue-cert"},
		{"--cert-out", "x.pem"},
		{"--key-out", "x.key"},
		{"--issue-cert", "--cert-out", "x.pem", "--key-out", "x.key", "--cert-key-handle", "0x81000103"},
		{"--issue-cert", "--cert-out", "x.pem", "--cert-key-type", "rsa-2048"},
		{"--issue-cert", "--cert-out", "x.pem", "--key-out", "x.key", "--cert-key-type", "dsa"},
		{"--issue-cert", "--cert-out", "x.pem", "--cert-key-handle", "0x01000000"},
	} {
		if code, _, stderr := runCmd(t, append(append([]string(nil), base...), extra...)...); code != exitUsage {
			t.Errorf("%q: exit %d (%s), want %d", extra, code, stderr, exitUsage)
		}
	}
}

// tlsClientHandshake completes a TLS 1.3 handshake with cert as the client
// certificate against a server that requires one chaining to root: the
// client proves it holds the certificate's key.
func tlsClientHandshake(t *testing.T, cert tls.Certificate, root *x509.Certificate) {
	t.Helper()
	srvCA, err := devca.NewCA("handshake server CA", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := srvCA.Issue([]string{"handshake.test"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srvCert},
		ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: roots, MinVersion: tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- c.(*tls.Conn).Handshake()
	}()
	pool := x509.NewCertPool()
	pool.AddCert(srvCA.Cert)
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "handshake.test", Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Read(make([]byte, 1)) // TLS 1.3: the server's verdict on the client certificate arrives after the client's handshake
	if err := <-done; err != nil {
		t.Fatalf("server refused the client certificate: %v", err)
	}
}
