package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// clientFrom returns an HTTPS client for p's API that connects from the
// loopback source address ip.
func (p *inProcess) clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:     d.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: p.pool, ServerName: "localhost"},
	}}
}

// tlsFrom opens a TLS connection to p's API from ip and completes the handshake.
func (p *inProcess) tlsFrom(t *testing.T, ip string) (*tls.Conn, error) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	raw, err := d.Dial("tcp", p.API)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	c := tls.Client(raw, &tls.Config{RootCAs: p.pool, ServerName: "localhost"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c, c.HandshakeContext(ctx)
}

// TestAPIPerAddressLimits: on the HTTPS listener, connections from one
// address beyond api-conns-per-address are closed before the TLS handshake
// (the server never answers the ClientHello), while another address is
// still served; the refusal is counted and named in a warning.
func TestAPIPerAddressLimits(t *testing.T) {
	p := serveInProcess(t, "127.0.0.1:0", "-api-conns-per-address", "2")
	for i := 0; i < 2; i++ {
		if _, err := p.tlsFrom(t, "127.0.0.1"); err != nil {
			t.Fatalf("connection %d within the cap: %v", i, err)
		}
	}
	over, err := p.tlsFrom(t, "127.0.0.1")
	if err == nil {
		t.Fatal("a third connection from one address completed a TLS handshake")
	}
	if st := over.ConnectionState(); st.HandshakeComplete {
		t.Fatalf("handshake state %+v", st)
	}

	// Another address is served, /metrics included.
	hc := p.clientFrom("127.0.0.2")
	res, err := hc.Get("https://" + p.API + metricsPath)
	if err != nil {
		t.Fatalf("another address: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("another address: /metrics %d", res.StatusCode)
	}
	if want := `dpsd_connections_refused_total{listener="api",reason="per_address_cap"} 1`; !strings.Contains(string(body), want) {
		t.Fatalf("/metrics lacks %s", want)
	}
	var warned bool
	for _, line := range strings.Split(p.logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "connection refused by a per-address limit" &&
			rec["listener"] == apiListener && rec["address"] == "127.0.0.1" && rec["level"] == "WARN" {
			warned = true
		}
	}
	if !warned {
		t.Fatalf("no warning names 127.0.0.1:\n%s", p.logs.String())
	}
}
