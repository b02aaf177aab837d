package testkit

import (
	"net"
	"strconv"
	"testing"
)

// TestFindFreePorts: the ports found lie below the ephemeral range and can
// all be bound.
func TestFindFreePorts(t *testing.T) {
	for _, n := range []int{1, 2, 3} {
		p, err := FindFreePorts(n)
		if err != nil {
			t.Fatal(err)
		}
		if p < 1024 || p+n > ephemeralLow() {
			t.Fatalf("FindFreePorts(%d) = %d, outside [1024, %d)", n, p, ephemeralLow())
		}
		for i := range n {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+i))
			if err != nil {
				t.Fatalf("FindFreePorts(%d) = %d, but %d is taken: %v", n, p, p+i, err)
			}
			l.Close()
		}
	}
	if _, err := FindFreePorts(0); err == nil {
		t.Fatal("FindFreePorts(0) found something")
	}
}

// TestPortsFree: a run that includes a bound port is not free.
func TestPortsFree(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	bound := l.Addr().(*net.TCPAddr).Port
	if portsFree(bound-1, 2) {
		t.Fatalf("ports %d and %d reported free while %d is bound", bound-1, bound, bound)
	}
	if portsFree(bound, 1) {
		t.Fatalf("port %d reported free while bound", bound)
	}
}
