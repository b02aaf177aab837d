// Package tpmtransport opens a go-tpm transport.TPM from a selector string, so
// that tools and tests name a TPM the same way everywhere:
//
//	/dev/tpmrm0, /dev/tpm0   a Linux TPM character device (or a Unix socket path)
//	swtpm:HOST:PORT          swtpm's raw TCP server socket (see SWTPM)
//	simulator                the in-process Microsoft reference simulator (cgo)
//
// Every transport returned serializes Send, so it may be shared by
// goroutines; multi-command sequences still need their caller's own locking.
package tpmtransport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// SelectorSimulator selects the in-process reference simulator.
const SelectorSimulator = "simulator"

// swtpmPrefix starts a swtpm selector.
const swtpmPrefix = "swtpm:"

// DefaultSelector is the Linux kernel's TPM resource manager device.
const DefaultSelector = "/dev/tpmrm0"

// ErrBadSelector is returned for a selector that names no known TPM kind.
var ErrBadSelector = errors.New("tpmtransport: bad TPM selector")

// Open opens the TPM named by selector (see the package comment). ctx bounds
// dialing a swtpm. Opening "simulator" while another simulator is open in this
// process blocks until that one is closed (it is one instance per process),
// and its state is lost when it is closed.
func Open(ctx context.Context, selector string) (transport.TPMCloser, error) {
	switch {
	case selector == "":
		return nil, fmt.Errorf("%w: empty", ErrBadSelector)
	case selector == SelectorSimulator:
		return OpenSimulator()
	case strings.HasPrefix(selector, swtpmPrefix):
		addr := strings.TrimPrefix(selector, swtpmPrefix)
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("%w: %q: want swtpm:HOST:PORT: %w", ErrBadSelector, selector, err)
		}
		return DialSWTPM(ctx, addr, SWTPMOptions{})
	case strings.HasPrefix(selector, "/"):
		return OpenDevice(selector)
	default:
		return nil, fmt.Errorf("%w: %q: want a device path, swtpm:HOST:PORT or simulator", ErrBadSelector, selector)
	}
}

// OpenDevice opens a TPM character device (/dev/tpmrm0 is preferred: the
// kernel resource manager lets several processes share the TPM), or a TPM
// emulator's Unix socket when path is a socket.
func OpenDevice(path string) (transport.TPMCloser, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tpmtransport: open %s: %w", path, err)
	}
	var t transport.TPMCloser
	if fi.Mode()&os.ModeSocket != 0 {
		t, err = linuxudstpm.Open(path)
	} else {
		t, err = linuxtpm.Open(path)
	}
	if err != nil {
		return nil, fmt.Errorf("tpmtransport: open %s: %w", path, err)
	}
	return Serialize(t), nil
}

// Serialize wraps t so that its Send and Close calls never run concurrently.
func Serialize(t transport.TPMCloser) transport.TPMCloser {
	return &serialized{t: t}
}

// serialized guards a transport that is not safe for concurrent use.
type serialized struct {
	mu     sync.Mutex
	t      transport.TPMCloser
	closed bool
}

// Send runs one command with the lock held.
func (s *serialized) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	return s.t.Send(cmd)
}

// Close closes the transport once.
func (s *serialized) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.t.Close()
}
