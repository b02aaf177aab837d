package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/issuer"
)

// serveOnce runs dpsd serve in process with args until it has started,
// and returns its "dpsd started" line.
func serveOnce(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"serve", "-mqtt-addr", "127.0.0.1:0", "-mqtts-addr", "", "-api-addr", "", "-log-format", "json"}, args...), io.Discard, pw)
		pw.Close()
	}()
	var line string
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		if strings.Contains(sc.Text(), `"msg":"dpsd started"`) {
			line = sc.Text()
			cancel()
		}
	}
	if code := <-done; code != 0 || line == "" {
		t.Fatalf("serve %v: exit %d, start line %q", args, code, line)
	}
	return line
}

func pemCertificates(t *testing.T, data []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			t.Fatalf("a %s block", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// TestCAExport: before the first start there is nothing to export; dpsd
// serve generates the issuing CA (apart from the TLS CA) and ca export
// prints it, no key; an operator's CA and root are printed as given; with
// issuer none there is nothing to export.
func TestCAExport(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"ca", "export", "-data-dir", dir}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "start dpsd serve once") {
		t.Fatalf("before the first start: exit %d, %s", code, stderr.String())
	}
	line := serveOnce(t, "-data-dir", dir, "-issuer-key-type", "ecdsa-p384", "-mqtts-addr", "127.0.0.1:0")
	if !strings.Contains(line, `"issuer":"builtin:`+filepath.Join(dir, datadir.IssuingCACertFile)+`"`) {
		t.Fatalf("start line names no built-in issuer: %s", line)
	}
	stdout.Reset()
	stderr.Reset()
	if code := run(context.Background(), []string{"ca", "export", "-data-dir", dir}, &stdout, &stderr); code != 0 {
		t.Fatalf("ca export: exit %d, %s", code, stderr.String())
	}
	if strings.Contains(stdout.String(), "PRIVATE KEY") {
		t.Fatal("ca export printed a key")
	}
	chain := pemCertificates(t, stdout.Bytes())
	kept, err := os.ReadFile(filepath.Join(dir, datadir.IssuingCACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 1 || !chain[0].Equal(pemCertificates(t, kept)[0]) || !chain[0].IsCA {
		t.Fatalf("exported %d certificates, not the issuing CA", len(chain))
	}
	tlsCA, err := os.ReadFile(filepath.Join(dir, datadir.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if pemCertificates(t, tlsCA)[0].Equal(chain[0]) {
		t.Fatal("the issuing CA is the TLS CA")
	}
	if alg := chain[0].PublicKeyAlgorithm; alg != x509.ECDSA || chain[0].SignatureAlgorithm != x509.ECDSAWithSHA384 {
		t.Fatalf("issuer-key-type ecdsa-p384 gave %v / %v", alg, chain[0].SignatureAlgorithm)
	}

	// An operator's issuing CA with its root.
	root, err := issuer.NewCA(issuer.KeyECDSAP256, pkix.Name{CommonName: "op root"}, time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	opDir := t.TempDir()
	keyPEM, _ := root.KeyPEM()
	certFile, keyFile := filepath.Join(opDir, "ca.pem"), filepath.Join(opDir, "ca.key")
	if err := os.WriteFile(certFile, root.ChainPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	if code := run(context.Background(), []string{"ca", "export", "-data-dir", dir, "-issuer-cert", certFile, "-issuer-key", keyFile}, &stdout, &stderr); code != 0 {
		t.Fatalf("ca export of the operator's CA: exit %d, %s", code, stderr.String())
	}
	if got := pemCertificates(t, stdout.Bytes()); len(got) != 1 || !got[0].Equal(root.Certificate()) {
		t.Fatal("not the operator's CA")
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"ca", "export", "-data-dir", dir, "-issuer", "none"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "issuer is none") {
		t.Fatalf("issuer none: exit %d, %s", code, stderr.String())
	}
}

// TestServeIssuerRefusesBadKeyFile: serve does not start with an
// operator's issuing key that others can read.
func TestServeIssuerRefusesBadKeyFile(t *testing.T) {
	ca, err := issuer.NewCA(issuer.KeyECDSAP256, pkix.Name{CommonName: "op"}, time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	opDir := t.TempDir()
	keyPEM, _ := ca.KeyPEM()
	certFile, keyFile := filepath.Join(opDir, "ca.pem"), filepath.Join(opDir, "ca.key")
	if err := os.WriteFile(certFile, ca.ChainPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"serve", "-data-dir", t.TempDir(), "-mqtt-addr", "127.0.0.1:0", "-mqtts-addr", "", "-api-addr", "",
		"-issuer-cert", certFile, "-issuer-key", keyFile}, io.Discard, &stderr)
	if code == 0 || !strings.Contains(stderr.String(), "chmod 600") {
		t.Fatalf("exit %d, %s", code, stderr.String())
	}
	if strings.Contains(stderr.String(), string(keyPEM[40:80])) {
		t.Fatal("the key is in the log")
	}
}
