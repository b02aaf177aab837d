package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/config"
	"github.com/tpmdps/dpsd/internal/devca"
)

// TestOutboundClientMutualTLS: a webhook or hub that asks for a client
// certificate gets outbound-client-cert from dpsd's outbound client, whose
// roots include outbound-ca-file; without the certificate the handshake
// fails, and a server from an untrusted CA is refused. Each certificate of
// outbound-client-certs has a client of its own.
func TestOutboundClientMutualTLS(t *testing.T) {
	now := time.Now()
	ca, err := devca.NewCA("outbound test CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := ca.Issue([]string{"127.0.0.1"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, err := devca.TLSConfig(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	clientCA, err := devca.NewRootCA("webhook clients", now, time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey, err := clientCA.IssueClient("dpsd-node-1", now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	clients := x509.NewCertPool()
	clients.AddCert(clientCA.Cert)
	srvTLS.ClientAuth, srvTLS.ClientCAs = tls.RequireAndVerifyClientCert, clients

	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	srv.TLS = srvTLS
	srv.StartTLS()
	t.Cleanup(srv.Close)

	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := config.Config{
		OutboundCAFile:     write("ca.pem", ca.CertPEM()),
		OutboundClientCert: write("client.pem", clientCert),
		OutboundClientKey:  write("client.key", clientKey),
		HandoffWorkers:     2,
	}
	get := func(c *http.Client) (string, error) {
		res, err := c.Get(srv.URL)
		if err != nil {
			return "", err
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		return string(b), err
	}

	withCert, err := newOutboundClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cn, err := get(withCert.Default); err != nil || cn != "dpsd-node-1" {
		t.Fatalf("with outbound-client-cert: %q, %v; want the server to see dpsd-node-1", cn, err)
	}

	noCert := cfg
	noCert.OutboundClientCert, noCert.OutboundClientKey = "", ""
	c, err := newOutboundClients(noCert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := get(c.Default); err == nil {
		t.Fatal("a server requiring a client certificate answered a client without one")
	}

	untrusted := cfg
	untrusted.OutboundCAFile = ""
	c, err = newOutboundClients(untrusted)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := get(c.Default); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a server from a CA outside outbound-ca-file and the system's: %v, want a certificate error", err)
	}

	bad := cfg
	bad.OutboundCAFile = write("empty.pem", []byte("no PEM here"))
	if _, err := newOutboundClients(bad); err == nil || !strings.Contains(err.Error(), "outbound-ca-file") {
		t.Fatalf("outbound-ca-file without a certificate: %v, want an error naming the setting", err)
	}

	// Named certificates: each client presents its own; the default none.
	named := filepath.Join(dir, "named")
	if err := os.Mkdir(named, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, cn := range []string{"tenant-a", "tenant.b"} {
		cert, key, err := clientCA.IssueClient("cn-"+cn, now.Add(-time.Minute), now.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		write(filepath.Join("named", cn+".pem"), cert)
		write(filepath.Join("named", cn+".key"), key)
	}
	withNamed := noCert
	withNamed.OutboundClientCerts = named
	c, err = newOutboundClients(withNamed)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Named) != 2 {
		t.Fatalf("named clients: %d, want 2", len(c.Named))
	}
	for name, client := range c.Named {
		if cn, err := get(client); err != nil || cn != "cn-"+name {
			t.Fatalf("named client %s: %q, %v; want the server to see cn-%s", name, cn, err, name)
		}
	}
	if _, err := get(c.Default); err == nil {
		t.Fatal("the default client presented a named certificate")
	}

	// A key others may read, a certificate without its key and a name that
	// is not one are refused at start, naming the file.
	if err := os.Chmod(filepath.Join(named, "tenant-a.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := newOutboundClients(withNamed); err == nil || !strings.Contains(err.Error(), "tenant-a.key") {
		t.Fatalf("a key readable by others: %v, want an error naming it", err)
	}
	if err := os.Chmod(filepath.Join(named, "tenant-a.key"), 0o600); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join("named", "lonely.pem"), clientCert)
	if _, err := newOutboundClients(withNamed); err == nil || !strings.Contains(err.Error(), "lonely") {
		t.Fatalf("a certificate without its key: %v, want an error naming it", err)
	}
	if err := os.Remove(filepath.Join(named, "lonely.pem")); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join("named", "bad name.pem"), clientCert)
	if _, err := newOutboundClients(withNamed); err == nil || !strings.Contains(err.Error(), "bad name") {
		t.Fatalf("a file name that is no certificate name: %v, want an error naming it", err)
	}
}
