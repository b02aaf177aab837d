package testkit

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// FreePort returns a TCP port that is free on 127.0.0.1 just now, for a
// child process that must be told its port (it cannot bind port 0 and say
// which it got). See FindFreePorts for where it looks.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := FindFreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// FreeAddr returns "127.0.0.1:PORT" with a FreePort.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}

// FreePortPair returns a port P with P and P+1 free on 127.0.0.1 (swtpm's
// command and control ports).
func FreePortPair(t testing.TB) int {
	t.Helper()
	p, err := FindFreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// FindFreePorts returns a port P with the n ports from P free on 127.0.0.1,
// for code that has no testing.TB. It looks below the kernel's ephemeral
// port range: inside it, a port the kernel just handed out (to a listener
// at port 0, or to a client connection) may be taken again at any moment,
// and the port next to one is often held by a client connection in
// TIME_WAIT (Linux gives connect the even ports and bind the odd ones),
// which blocks a child's bind after a run of many short connections.
func FindFreePorts(n int) (int, error) {
	if n < 1 {
		return 0, fmt.Errorf("testkit: %d free ports asked for", n)
	}
	lo, hi := 10000, ephemeralLow()-n
	if hi <= lo {
		lo, hi = 1024, 65536-n
	}
	for range 200 {
		port := lo + rand.IntN(hi-lo)
		if portsFree(port, n) {
			return port, nil
		}
	}
	return 0, errors.New("testkit: no run of free ports found")
}

// portsFree tells whether ports port..port+n-1 can all be bound on
// 127.0.0.1 at once.
func portsFree(port, n int) bool {
	var open []net.Listener
	defer func() {
		for _, l := range open {
			_ = l.Close()
		}
	}()
	for i := range n {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+i)))
		if err != nil {
			return false
		}
		open = append(open, l)
	}
	return true
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux;
// 32768, the usual value, elsewhere or when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n <= 1024 {
		return 32768
	}
	return n
}
