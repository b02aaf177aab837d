package devtpm_test

import (
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
)

// simTPM returns the shared simulator, started on first use, and registers a
// check that the test leaves no transient objects or sessions loaded.
func simTPM(t *testing.T) transport.TPM {
	t.Helper()
	tpm := tpmsim.Open(t)
	if n := loadedHandles(t, tpm); n != 0 {
		t.Fatalf("%d transient objects or sessions loaded before the test", n)
	}
	t.Cleanup(func() {
		if n := loadedHandles(t, tpm); n != 0 {
			t.Errorf("test leaked %d transient objects or sessions", n)
			flushAll(t, tpm)
		}
	})
	return tpm
}

// loadedHandles counts transient objects and loaded sessions.
func loadedHandles(t *testing.T, tpm transport.TPM) int {
	t.Helper()
	return len(handlesOf(t, tpm, 0x80000000)) + len(handlesOf(t, tpm, 0x02000000)) + len(handlesOf(t, tpm, 0x03000000))
}

// handlesOf lists the handles in the range starting at first.
func handlesOf(t *testing.T, tpm transport.TPM, first uint32) []tpm2.TPMHandle {
	t.Helper()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: first, PropertyCount: 64}.Execute(tpm)
	if err != nil {
		t.Fatalf("GetCapability(handles 0x%08x): %v", first, err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatalf("GetCapability handles: %v", err)
	}
	var out []tpm2.TPMHandle
	for _, h := range hs.Handle {
		if uint32(h)>>24 == first>>24 {
			out = append(out, h)
		}
	}
	return out
}

// flushAll flushes every transient object and session, so that one failing
// test does not make every later one fail.
func flushAll(t *testing.T, tpm transport.TPM) {
	for _, first := range []uint32{0x80000000, 0x02000000, 0x03000000} {
		for _, h := range handlesOf(t, tpm, first) {
			_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(tpm)
		}
	}
}
