package broker

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/ratelimit"
)

// standInListener hands out in-memory connections that claim the remote
// addresses given, so that the guard can be fed addresses no loopback
// interface has (two hosts of one IPv6 /64).
type standInListener struct {
	conns chan net.Conn
}

// remoteConn is one end of a net.Pipe with a chosen remote address.
type remoteConn struct {
	net.Conn
	remote net.Addr
}

func (c remoteConn) RemoteAddr() net.Addr { return c.remote }

func (l *standInListener) Accept() (net.Conn, error) {
	c, ok := <-l.conns
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l *standInListener) Close() error   { return nil }
func (l *standInListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv6loopback} }

// dialFrom queues a connection from ip and returns the client's end.
func (l *standInListener) dialFrom(t *testing.T, ip string) net.Conn {
	t.Helper()
	server, client := net.Pipe()
	t.Cleanup(func() { server.Close(); client.Close() })
	l.conns <- remoteConn{Conn: server, remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}}
	return client
}

// TestGuardKeysIPv6ByPrefix: with a cap of one connection per address, a
// second host of the same /64 is refused (closed unread) while a host of
// another /64 is admitted; with a /128 prefix each host counts alone.
func TestGuardKeysIPv6ByPrefix(t *testing.T) {
	for _, tc := range []struct {
		bits        int
		sameRefused bool
	}{{64, true}, {128, false}} {
		l := &standInListener{conns: make(chan net.Conn, 3)}
		g := &guardListener{
			Listener:      l,
			name:          "test",
			perAddr:       ratelimit.NewCounter(1),
			ipv6PrefixLen: tc.bits,
			log:           slog.New(slog.DiscardHandler),
			conns:         make(map[*guardConn]struct{}),
		}
		l.dialFrom(t, "2001:db8:1:2::1")
		same := l.dialFrom(t, "2001:db8:1:2:ffff::2")
		l.dialFrom(t, "2001:db8:1:3::1")
		close(l.conns)
		var admitted []string
		for {
			c, err := g.Accept()
			if err != nil {
				break
			}
			admitted = append(admitted, c.RemoteAddr().(*net.TCPAddr).IP.String())
		}
		want := []string{"2001:db8:1:2::1", "2001:db8:1:2:ffff::2", "2001:db8:1:3::1"}
		if tc.sameRefused {
			want = []string{"2001:db8:1:2::1", "2001:db8:1:3::1"}
			same.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := same.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Fatalf("/%d: the refused connection was not closed: %v", tc.bits, err)
			}
		}
		if len(admitted) != len(want) {
			t.Fatalf("/%d: admitted %v, want %v", tc.bits, admitted, want)
		}
		for i := range want {
			if admitted[i] != want[i] {
				t.Fatalf("/%d: admitted %v, want %v", tc.bits, admitted, want)
			}
		}
	}
}

// TestGuardLeavesDeadlinesToServer: a connection admitted by Guard (the
// HTTPS listener's) keeps the deadlines its server sets, writes included,
// and its slot is released when it is closed.
func TestGuardLeavesDeadlinesToServer(t *testing.T) {
	l := &standInListener{conns: make(chan net.Conn, 2)}
	g := Guard(l, "api", GuardLimits{ConnectionsPerAddress: 1}, nil, nil)
	client := l.dialFrom(t, "192.0.2.1")
	c, err := g.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write after SetDeadline in the past: %v, want a deadline error", err)
	}
	// The failed write did not close the connection: the server decides.
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = c.Write([]byte("y")) }()
	buf := make([]byte, 1)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(client, buf); err != nil || buf[0] != 'y' {
		t.Fatalf("read %q %v", buf, err)
	}
	c.Close()
	l.dialFrom(t, "192.0.2.1")
	close(l.conns)
	if _, err := g.Accept(); err != nil {
		t.Fatalf("the slot was not released on Close: %v", err)
	}
}
