// Package tpmsim shares the Microsoft reference TPM simulator (go-tpm-tools,
// in process, cgo) among the tests of one test binary. There can be only one
// simulator per process, so it is opened once, on first use, and kept until
// the process ends; its state (EK, persistent handles) carries over from one
// test to the next.
//
// A test holds the simulator from its first Open until it ends (its
// subtests share the hold), so tests that run in parallel never see each
// other's transient objects. Commands are serialized, so the goroutines of
// one test may use it at once.
package tpmsim

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/simulator"
)

// shared is the process's one simulator: the simulator allows one instance
// per process, so this state is per process too.
var shared struct {
	once sync.Once
	tpm  *serialized
	err  error
	hold hold
}

// Open returns the shared simulator, starting it on first use, and holds it
// for t until t ends. A later Open by t or by another test under t's
// top-level test shares the hold; any other test waits for it.
func Open(t testing.TB) transport.TPM {
	t.Helper()
	root, _, _ := strings.Cut(t.Name(), "/")
	tpm, release, err := Acquire(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	return tpm
}

// Acquire is Open for code that has no testing.TB (a runnable example):
// it holds the simulator for the top-level test or example called name
// until release is called.
func Acquire(name string) (tpm transport.TPM, release func(), err error) {
	shared.once.Do(func() {
		sim, err := simulator.OpenSimulator()
		if err != nil {
			shared.err = fmt.Errorf("tpmsim: start the TPM simulator: %w", err)
			return
		}
		shared.tpm = &serialized{t: sim}
	})
	if shared.err != nil {
		return nil, nil, shared.err
	}
	return shared.tpm, shared.hold.acquire(name), nil
}

// hold lets one top-level test at a time hold a resource; the tests under it
// share the hold, which ends when the last of them that acquired it ends.
type hold struct {
	mu     sync.Mutex
	free   *sync.Cond // signalled when holder becomes ""
	holder string     // the top-level test holding it; "" when free
	refs   int        // acquisitions by holder's tests not yet released
}

// acquire waits until the resource is free or held by root, takes it for
// root, and returns the function that gives this acquisition back.
func (h *hold) acquire(root string) (release func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.free == nil {
		h.free = sync.NewCond(&h.mu)
	}
	for h.holder != "" && h.holder != root {
		h.free.Wait()
	}
	h.holder = root
	h.refs++
	var once sync.Once
	return func() {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.refs--; h.refs == 0 {
				h.holder = ""
				h.free.Broadcast()
			}
		})
	}
}

// serialized runs one command at a time: the simulator's transport writes a
// command and reads its answer on one stream.
type serialized struct {
	mu sync.Mutex
	t  transport.TPM
}

// Send runs one command with the lock held.
func (s *serialized) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.t.Send(cmd)
}
