package tlsticket

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/devca"
)

// server is a TLS server config with a development certificate, and the
// CA pool that trusts it.
func server(t testing.TB) (*tls.Config, *x509.CertPool) {
	t.Helper()
	now := time.Now()
	ca, err := devca.NewCA("test CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue([]string{"127.0.0.1"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := devca.TLSConfig(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return c, pool
}

// serve accepts TLS connections on a loopback listener until t ends; each
// handshakes, writes one byte (so that TLS 1.3 tickets are sent) and closes.
func serve(t testing.TB, c *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_, _ = conn.Write([]byte{1})
				_, _ = io.Copy(io.Discard, conn)
			}()
		}
	}()
	return ln.Addr().String()
}

// dial connects with the client's session cache and reports whether the
// session was resumed.
func dial(t testing.TB, addr string, cc *tls.Config) bool {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		t.Fatal(err)
	}
	return conn.ConnectionState().DidResume
}

// TestResumeOnAnotherNode: two servers (nodes) keyed from one secret
// resume each other's sessions; a node with another secret does not; a
// ticket of yesterday still resumes, one of three days ago does not.
func TestResumeOnAnotherNode(t *testing.T) {
	secret := bytes.Repeat([]byte{4}, 32)
	day := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	clock := day
	now := func() time.Time { return clock }
	k, err := New(secret, now)
	if err != nil {
		t.Fatal(err)
	}
	c1, pool := server(t)
	c2 := c1.Clone()
	k.Apply(c1)
	k.Apply(c2)
	other := c1.Clone()
	ko, _ := New(bytes.Repeat([]byte{5}, 32), now)
	ko.Apply(other)
	a, b, o := serve(t, c1), serve(t, c2), serve(t, other)

	cc := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	if dial(t, a, cc) {
		t.Fatal("the first connection resumed")
	}
	if !dial(t, b, cc) {
		t.Fatal("a session of node a did not resume on node b")
	}
	cc2 := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	dial(t, a, cc2)
	if dial(t, o, cc2) {
		t.Fatal("a node with another secret resumed the session")
	}
	// Keys a day later still accept the ticket; three days later they do not.
	old := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	dial(t, a, old)
	c2.SetSessionTicketKeys(k.At(day.Add(Day)))
	if !dial(t, b, old) {
		t.Fatal("yesterday's ticket did not resume")
	}
	old2 := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	dial(t, a, old2)
	c2.SetSessionTicketKeys(k.At(day.Add(3 * Day)))
	if dial(t, b, old2) {
		t.Fatal("a ticket three days old resumed")
	}
	if _, err := New(secret[:16], nil); err == nil {
		t.Fatal("a short secret was accepted")
	}
}

// BenchmarkHandshake measures a full TLS 1.3 handshake with the
// development certificate (ECDSA P-256) and one resumed from a ticket (the
// second connection of every TPM provisioning), over loopback TCP, both
// sides in this process: time per connection, handshake and one byte.
func BenchmarkHandshake(b *testing.B) {
	k, _ := New(bytes.Repeat([]byte{4}, 32), nil)
	sc, pool := server(b)
	k.Apply(sc)
	addr := serve(b, sc)
	for _, resume := range []bool{false, true} {
		name := "full"
		if resume {
			name = "resumed"
		}
		b.Run(name, func(b *testing.B) {
			cc := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
			if resume {
				cc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
				dial(b, addr, cc) // fills the cache
			}
			b.ResetTimer()
			for range b.N {
				if got := dial(b, addr, cc); got != resume {
					b.Fatalf("resumed %v", got)
				}
			}
		})
	}
}
