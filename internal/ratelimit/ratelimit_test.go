package ratelimit

import (
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/testkit"
)

func TestLimiterBurstThenRefill(t *testing.T) {
	clk := testkit.NewClock(time.Unix(1000, 0))
	l := New(1, 3, clk.Now) // 1 per second, burst 3
	for i := 0; i < 3; i++ {
		if ok, _ := l.Allow("a"); !ok {
			t.Fatalf("token %d refused", i)
		}
	}
	ok, wait := l.Allow("a")
	if ok || wait <= 0 || wait > time.Second {
		t.Fatalf("4th: ok=%v wait=%v, want refused with wait in (0,1s]", ok, wait)
	}
	if ok, _ := l.Allow("b"); !ok {
		t.Fatal("another key must have its own bucket")
	}
	clk.Advance(time.Second)
	if ok, _ := l.Allow("a"); !ok {
		t.Fatal("a token must be back after 1 s")
	}
	if ok, _ := l.Allow("a"); ok {
		t.Fatal("only one token must be back after 1 s")
	}
}

func TestLimiterDisabled(t *testing.T) {
	l := New(0, 1, nil)
	for i := 0; i < 100; i++ {
		if ok, _ := l.Allow("x"); !ok {
			t.Fatal("a zero rate must disable the limiter")
		}
	}
	var nilL *Limiter
	if ok, _ := nilL.Allow("x"); !ok {
		t.Fatal("nil limiter must allow")
	}
}

func TestLimiterPrunes(t *testing.T) {
	clk := testkit.NewClock(time.Unix(1000, 0))
	l := New(10, 1, clk.Now)
	for i := 0; i < maxIdleKeys; i++ {
		l.Allow(string(rune('a'+i%26)) + string(rune(i)))
	}
	clk.Advance(time.Hour)
	l.Allow("new")
	if n := l.Len(); n != 1 {
		t.Fatalf("after prune %d keys, want 1", n)
	}
}

func TestCounter(t *testing.T) {
	c := NewCounter(2)
	if !c.Acquire("a") || !c.Acquire("a") {
		t.Fatal("two slots expected")
	}
	if c.Acquire("a") {
		t.Fatal("third slot must be refused")
	}
	if !c.Acquire("b") {
		t.Fatal("other key refused")
	}
	c.Release("a")
	if !c.Acquire("a") {
		t.Fatal("released slot not reusable")
	}
	c.Release("a")
	c.Release("a")
	if c.Count("a") != 0 || len(c.n) != 1 {
		t.Fatalf("count %d, keys %d", c.Count("a"), len(c.n))
	}
}

func TestBucket(t *testing.T) {
	now := time.Unix(1000, 0)
	b := NewBucket(2, 2, now)
	for i := 0; i < 2; i++ {
		if ok, _ := b.Allow(now); !ok {
			t.Fatalf("token %d refused", i)
		}
	}
	ok, wait := b.Allow(now)
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("empty bucket: ok=%v wait=%v, want refused, 500ms", ok, wait)
	}
	if ok, _ := b.Allow(now.Add(500 * time.Millisecond)); !ok {
		t.Fatal("token not back after 500 ms")
	}
	if ok, _ := NewBucket(0, 1, now).Allow(now); !ok {
		t.Fatal("zero rate must allow")
	}
}

// TestReadyAndCharge: Ready spends nothing; Charge spends even past zero
// (down to -burst), and the debt is repaid at the rate.
func TestReadyAndCharge(t *testing.T) {
	clk := testkit.NewClock(time.Unix(1000, 0))
	l := New(1, 2, clk.Now) // 1 per second, burst 2
	for i := 0; i < 5; i++ {
		if ok, _ := l.Ready("a"); !ok {
			t.Fatal("Ready refused a key that was never charged")
		}
	}
	if l.Len() != 0 {
		t.Fatalf("Ready created %d buckets", l.Len())
	}
	l.Charge("a")
	if ok, _ := l.Ready("a"); !ok {
		t.Fatal("one token should be left")
	}
	l.Charge("a")
	if ok, wait := l.Ready("a"); ok || wait != time.Second {
		t.Fatalf("after the burst: %v %v, want refused for 1s", ok, wait)
	}
	for i := 0; i < 10; i++ {
		l.Charge("a") // debt, floored at -2
	}
	if ok, wait := l.Ready("a"); ok || wait != 3*time.Second {
		t.Fatalf("in debt: %v %v, want refused for 3s", ok, wait)
	}
	clk.Advance(3 * time.Second)
	if ok, _ := l.Ready("a"); !ok {
		t.Fatal("the debt was not repaid at the rate")
	}
	if ok, _ := l.Ready("b"); !ok {
		t.Fatal("another key was refused")
	}
	var off *Limiter
	off.Charge("x")
	if ok, _ := off.Ready("x"); !ok {
		t.Fatal("a nil limiter refused")
	}
}
