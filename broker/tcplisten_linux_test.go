//go:build linux

package broker

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/testkit"
)

// acceptedKeepAlive reads the keep-alive options of an accepted socket.
func acceptedKeepAlive(t *testing.T, c net.Conn) (on int, ka keepAlive) {
	t.Helper()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		t.Fatalf("accepted %T, want *net.TCPConn", c)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var idle, intvl, cnt int
	var gerr error
	err = rc.Control(func(fd uintptr) {
		get := func(level, opt int) int {
			v, err := syscall.GetsockoptInt(int(fd), level, opt)
			if err != nil && gerr == nil {
				gerr = err
			}
			return v
		}
		on = get(syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		idle = get(syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
		intvl = get(syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
		cnt = get(syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT)
	})
	if err == nil {
		err = gerr
	}
	if err != nil {
		t.Fatalf("getsockopt: %v", err)
	}
	return on, keepAlive{idle: time.Duration(idle) * time.Second, interval: time.Duration(intvl) * time.Second, count: cnt}
}

// TestListenerKeepAliveInherited: accepted sockets carry the keep-alive
// options set on the listening socket. The values differ from Go's
// per-connection defaults, so the test also fails if Go still set its own
// options on each accepted connection (they would overwrite these).
func TestListenerKeepAliveInherited(t *testing.T) {
	want := keepAlive{idle: 17 * time.Second, interval: 4 * time.Second, count: 5}
	ln, err := listenKeepAlive(context.Background(), "127.0.0.1:0", want)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	on, got := acceptedKeepAlive(t, c)
	if on != 1 || got != want {
		t.Fatalf("accepted socket: SO_KEEPALIVE=%d %+v, want 1 %+v", on, got, want)
	}
}

// TestBrokerListenersKeepAlive: a connection accepted by each of the
// broker's listeners (plain, TLS, WebSocket) has keep-alive on with Go's
// default probing: idle 15 s, interval 15 s, 9 probes.
func TestBrokerListenersKeepAlive(t *testing.T) {
	serverTLS, _ := testTLSConfig(t)
	b := newTestBroker(t, Config{TCPAddr: "127.0.0.1:0", TLSAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0", TLSConfig: serverTLS})

	want := keepAlive{idle: 15 * time.Second, interval: 15 * time.Second, count: 9}
	for _, name := range []string{ListenerTCP, ListenerTLS, ListenerWS} {
		client, err := net.Dial("tcp", b.Addr(name).String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		g := b.guards[name]
		var accepted *guardConn
		testkit.Await(t, name+": the connection accepted", func() bool {
			g.mu.Lock()
			defer g.mu.Unlock()
			for c := range g.conns {
				accepted = c
			}
			return accepted != nil
		})
		on, got := acceptedKeepAlive(t, accepted.Conn)
		if on != 1 || got != want {
			t.Errorf("%s: accepted socket: SO_KEEPALIVE=%d %+v, want 1 %+v", name, on, got, want)
		}
	}
}
