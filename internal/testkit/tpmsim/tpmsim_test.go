package tpmsim

import (
	"sync"
	"testing"
	"testing/synctest"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// random asks the TPM for 8 random bytes.
func random(t testing.TB, tpm transport.TPM) []byte {
	t.Helper()
	rsp, err := tpm2.GetRandom{BytesRequested: 8}.Execute(tpm)
	if err != nil {
		t.Errorf("GetRandom: %v", err)
		return nil
	}
	return rsp.RandomBytes.Buffer
}

// TestOpenSharesWithinATest: a second Open by the same test and an Open by
// its subtest share the hold (they would deadlock otherwise); the goroutines
// of one test may send at once.
func TestOpenSharesWithinATest(t *testing.T) {
	tpm := Open(t)
	if again := Open(t); again != tpm {
		t.Fatal("a second Open returned another simulator")
	}
	t.Run("sub", func(t *testing.T) {
		if len(random(t, Open(t))) != 8 {
			t.Fatal("no random bytes in the subtest")
		}
	})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if len(random(t, tpm)) != 8 {
				t.Error("no random bytes")
			}
		})
	}
	wg.Wait()
}

// TestHoldWaitsForAnotherTest: while test A holds, test B waits; A's
// subtests do not; B gets the hold when A's last acquisition is released.
func TestHoldWaitsForAnotherTest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var h hold
		releaseA := h.acquire("TestA")
		gotB := make(chan func())
		go func() { gotB <- h.acquire("TestB") }()
		releaseSub := h.acquire("TestA") // a subtest of A: no wait
		synctest.Wait()                  // B is blocked in acquire
		select {
		case <-gotB:
			t.Fatal("B acquired while A held")
		default:
		}
		releaseA()
		releaseA() // twice: counted once
		synctest.Wait()
		select {
		case <-gotB:
			t.Fatal("B acquired while A's subtest still held")
		default:
		}
		releaseSub()
		releaseB := <-gotB
		releaseB()
		if h.holder != "" || h.refs != 0 {
			t.Fatalf("after every release: holder %q refs %d", h.holder, h.refs)
		}
	})
}
