//go:build linux

package procnet

import (
	"net"
	"os"
	"testing"
)

// TestListeningPID: a listener of this process is found as this process; a
// port that nobody listens on (the listener closed) is an error.
func TestListeningPID(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	pid, err := ListeningPID(port)
	if err != nil || pid != os.Getpid() {
		t.Fatalf("ListeningPID(%d) = %d, %v; want %d", port, pid, err, os.Getpid())
	}
	ln.Close()
	if pid, err := ListeningPID(port); err == nil {
		t.Fatalf("ListeningPID(%d) after close = %d, want an error", port, pid)
	}
}
