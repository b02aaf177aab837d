// Package swtpmtest starts real swtpm processes for tests, as httptest does
// servers: each on free loopback ports with its own state directory, killed
// in t.Cleanup. swtpm must be installed (Debian: swtpm, swtpm-tools).
package swtpmtest

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// Instance is one running swtpm.
type Instance struct {
	// Addr is the TPM command socket ("127.0.0.1:port").
	Addr string
	// CtrlAddr is the control channel socket.
	CtrlAddr string
	// StateDir holds the TPM state; it survives Stop for a restart.
	StateDir string

	cmd    *exec.Cmd
	exited chan struct{}
}

// Selector returns the tpmtransport selector for this instance.
func (in *Instance) Selector() string { return "swtpm:" + in.Addr }

// Start starts a fresh swtpm with a new state directory and waits until its
// command port accepts connections.
func Start(t testing.TB) *Instance {
	t.Helper()
	return StartDir(t, t.TempDir())
}

// StartDir starts swtpm on stateDir (an existing TPM state is reused) and
// waits until it accepts connections. It fails the test when swtpm is not
// installed: the team's tests are not skipped.
func StartDir(t testing.TB, stateDir string) *Instance {
	t.Helper()
	if _, err := exec.LookPath("swtpm"); err != nil {
		t.Fatalf("swtpm is not installed (apt-get install swtpm swtpm-tools): %v", err)
	}
	var lastErr error
	for range 5 { // another process may grab a port between probing and binding
		in, err := start(stateDir)
		if err == nil {
			t.Cleanup(in.Stop)
			return in
		}
		lastErr = err
	}
	t.Fatalf("start swtpm: %v", lastErr)
	return nil
}

func start(stateDir string) (*Instance, error) {
	port, err := freePortPair()
	if err != nil {
		return nil, err
	}
	in := &Instance{
		Addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		CtrlAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1)),
		StateDir: stateDir,
		exited:   make(chan struct{}),
	}
	in.cmd = exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+stateDir,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
		"--flags", "not-need-init,startup-clear")
	if err := in.cmd.Start(); err != nil {
		return nil, fmt.Errorf("exec swtpm: %w", err)
	}
	go func() {
		_ = in.cmd.Wait()
		close(in.exited)
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", in.Addr, time.Second)
		if err == nil {
			_ = c.Close()
			return in, nil
		}
		select {
		case <-in.exited:
			return nil, fmt.Errorf("swtpm exited before listening on %s", in.Addr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			in.Stop()
			return nil, fmt.Errorf("swtpm not listening on %s: %w", in.Addr, err)
		}
	}
}

// Stop kills the process and waits for it to exit. Safe to call twice.
func (in *Instance) Stop() {
	select {
	case <-in.exited:
		return
	default:
	}
	_ = in.cmd.Process.Kill()
	<-in.exited
}

// freePortPair finds a port P such that P and P+1 are both free on loopback.
func freePortPair() (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
		_ = l.Close()
		if err != nil {
			continue
		}
		_ = l2.Close()
		return p, nil
	}
	return 0, errors.New("no free loopback port pair")
}
