package gate

import (
	"errors"
	"testing"

	"github.com/tpmdps/dpsd/store"
)

func TestCloseWaitsForAdmittedCalls(t *testing.T) {
	var g Gate
	if err := g.Enter(); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- g.Close() }()
	// A call admitted before Close holds it open; once Close has begun, no
	// new call is admitted. Await the refusal as the sign Close has begun.
	for {
		err := g.Enter()
		if errors.Is(err, store.ErrClosed) {
			break
		}
		g.Leave()
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v while a call was in flight", err)
	default:
	}
	g.Leave()
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := g.Close(); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("second Close: %v, want store.ErrClosed", err)
	}
}
