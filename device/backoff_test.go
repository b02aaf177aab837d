package device

import (
	"testing"
	"time"
)

func TestBackoffDelay(t *testing.T) {
	fixed := func(r float64) func() float64 { return func() float64 { return r } }
	b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Rand: fixed(0)}
	// Lower edge of the jitter window: d/2.
	for retry, want := range []time.Duration{50, 100, 200, 400, 500, 500, 500} {
		if got := b.Delay(retry, 0); got != want*time.Millisecond {
			t.Errorf("retry %d: Delay = %v, want %v", retry, got, want*time.Millisecond)
		}
	}
	// Upper edge approaches d.
	b.Rand = fixed(0.999)
	if got := b.Delay(2, 0); got < 399*time.Millisecond || got >= 400*time.Millisecond {
		t.Errorf("retry 2 at r=0.999: Delay = %v, want just under 400ms", got)
	}
	// retry-after is a floor.
	if got := b.Delay(0, 5*time.Second); got != 5*time.Second {
		t.Errorf("Delay with retry-after 5s = %v", got)
	}
	// A broken random source cannot push the delay out of range.
	b.Rand = fixed(7)
	if got := b.Delay(0, 0); got != 50*time.Millisecond {
		t.Errorf("Delay with r=7: %v", got)
	}
	// Huge retry counts do not overflow.
	b.Rand = fixed(0.5)
	if got := b.Delay(1000, 0); got <= 0 || got > time.Second {
		t.Errorf("Delay(1000) = %v", got)
	}
	// Defaults.
	d := Backoff{}.withDefaults()
	if d.Initial != time.Second || d.Max != 30*time.Second || d.MaxAttempts != 8 || d.Rand == nil {
		t.Errorf("defaults: %+v", d)
	}
}

func TestBackoffJitterSpreads(t *testing.T) {
	b := Backoff{Initial: time.Second}
	seen := map[time.Duration]bool{}
	for range 50 {
		d := b.Delay(3, 0)
		if d < 4*time.Second || d >= 8*time.Second {
			t.Fatalf("Delay(3) = %v outside [4s, 8s)", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Fatalf("50 jittered delays took only %d distinct values", len(seen))
	}
}
