package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/ratelimit"
	"github.com/tpmdps/dpsd/internal/testkit"
)

// testTLSConfig returns a server config with a fresh self-signed P-256
// certificate and a client config that trusts it.
func testTLSConfig(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}}, MinVersion: tls.VersionTLS12}
	client = &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	return server, client
}

// newTestHandshakeListener returns a handshakeListener over a guard with a
// CONNECT deadline of connectTimeout and a cap of two connections per
// address.
func newTestHandshakeListener(t *testing.T, cfg *tls.Config, connectTimeout time.Duration) (*handshakeListener, *guardListener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	g := &guardListener{
		Listener:       ln,
		name:           "test",
		connectTimeout: connectTimeout,
		writeTimeout:   10 * time.Second,
		perAddr:        ratelimit.NewCounter(2),
		rate:           ratelimit.New(1000, 1000, time.Now),
		log:            log,
		conns:          make(map[*guardConn]struct{}),
	}
	hl := newHandshakeListener(g, cfg, "test", log)
	t.Cleanup(func() { _ = hl.Close() })
	return hl, g
}

// awaitClosedByServer reads from c until the server closes it and fails the
// test if it is still open after a generous bound.
func awaitClosedByServer(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server did not close the connection")
	}
}

// awaitReleased polls until the guard tracks no connection and the address
// has both its slots free again.
func awaitReleased(t *testing.T, g *guardListener) {
	t.Helper()
	testkit.AwaitWithin(t, 30*time.Second, "no connection tracked", func() bool { return g.open() == 0 })
	for i := 0; i < 2; i++ {
		if !g.perAddr.Acquire("127.0.0.1") {
			t.Fatalf("per-address slot %d not released", i)
		}
	}
	g.perAddr.Release("127.0.0.1")
	g.perAddr.Release("127.0.0.1")
}

// TestHandshakeListenerHandsOnCompletedHandshakes: Accept returns a
// connection whose handshake is complete, and a client stalled before its
// ClientHello does not hold up another client's connection.
func TestHandshakeListenerHandsOnCompletedHandshakes(t *testing.T) {
	srvCfg, cliCfg := testTLSConfig(t)
	hl, _ := newTestHandshakeListener(t, srvCfg, time.Minute)

	stalled, err := net.Dial("tcp", hl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()

	type result struct {
		c   net.Conn
		err error
	}
	accepted := make(chan result, 1)
	go func() {
		c, err := hl.Accept()
		accepted <- result{c, err}
	}()
	client, err := tls.Dial("tcp", hl.Addr().String(), cliCfg)
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	defer client.Close()
	var r result
	select {
	case r = <-accepted:
	case <-time.After(30 * time.Second):
		t.Fatal("Accept did not return the handshaken connection while another client stalled")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.c.Close()
	tc, ok := r.c.(*tls.Conn)
	if !ok {
		t.Fatalf("Accept returned %T, want *tls.Conn", r.c)
	}
	if !tc.ConnectionState().HandshakeComplete {
		t.Fatal("handshake not complete when handed on")
	}
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
}

// TestHandshakeListenerConnectDeadline: a client that never completes its
// handshake, or sends garbage, is closed by the server (the CONNECT deadline
// covers the handshake), never handed on, and its per-address slot is freed.
func TestHandshakeListenerConnectDeadline(t *testing.T) {
	srvCfg, _ := testTLSConfig(t)
	hl, g := newTestHandshakeListener(t, srvCfg, 200*time.Millisecond)
	handed := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := hl.Accept()
			if err != nil {
				return
			}
			handed <- c
		}
	}()

	silent, err := net.Dial("tcp", hl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	garbage, err := net.Dial("tcp", hl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer garbage.Close()
	if _, err := garbage.Write([]byte("CONNECT, not a ClientHello\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	awaitClosedByServer(t, silent)
	awaitClosedByServer(t, garbage)
	awaitReleased(t, g)
	select {
	case c := <-handed:
		t.Fatalf("a connection without a completed handshake was handed on: %v", c.RemoteAddr())
	default:
	}
}

// TestHandshakeListenerPerAddressCapBeforeHandshake: a connection over the
// per-address cap is closed before any handshake.
func TestHandshakeListenerPerAddressCapBeforeHandshake(t *testing.T) {
	srvCfg, cliCfg := testTLSConfig(t)
	hl, _ := newTestHandshakeListener(t, srvCfg, time.Minute)
	go func() {
		for {
			c, err := hl.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	for i := 0; i < 2; i++ {
		c, err := tls.Dial("tcp", hl.Addr().String(), cliCfg)
		if err != nil {
			t.Fatalf("connection %d within the cap: %v", i, err)
		}
		defer c.Close()
	}
	if c, err := tls.Dial("tcp", hl.Addr().String(), cliCfg); err == nil {
		c.Close()
		t.Fatal("a connection over the per-address cap completed a TLS handshake")
	}
}

// TestHandshakeListenerClose: Accept fails once the listener is closed.
func TestHandshakeListenerClose(t *testing.T) {
	srvCfg, _ := testTLSConfig(t)
	hl, _ := newTestHandshakeListener(t, srvCfg, time.Minute)
	errs := make(chan error, 1)
	go func() {
		_, err := hl.Accept()
		errs <- err
	}()
	if err := hl.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}
