package tpmtransport

import (
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// TestSimulatorOpen opens the in-process simulator by selector, uses it from
// several goroutines at once (Send is serialized) and closes it.
func TestSimulatorOpen(t *testing.T) {
	tpm, err := Open(ctxT(t), SelectorSimulator)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 10 {
				rsp, err := tpm2.GetRandom{BytesRequested: 8}.Execute(tpm)
				if err != nil || len(rsp.RandomBytes.Buffer) != 8 {
					t.Errorf("concurrent GetRandom: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}
	// A second open works once the first is closed (one per process).
	tpm, err = Open(ctxT(t), SelectorSimulator)
	if err != nil {
		t.Fatal(err)
	}
	getRandom(t, tpm)
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}
}
