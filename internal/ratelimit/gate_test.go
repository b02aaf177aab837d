package ratelimit

import (
	"fmt"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/testkit"
)

// TestGateOncePerInterval: one event per key per interval passes, the next
// one to pass reports how many were held back, keys are independent.
func TestGateOncePerInterval(t *testing.T) {
	clk := testkit.NewClock(time.Unix(1000, 0))
	g := NewGate(time.Minute, 10, clk.Now)
	if ok, held := g.Pass("a"); !ok || held != 0 {
		t.Fatalf("first event: %v %d", ok, held)
	}
	for i := 0; i < 3; i++ {
		if ok, _ := g.Pass("a"); ok {
			t.Fatalf("event %d within the interval passed", i)
		}
	}
	if ok, _ := g.Pass("b"); !ok {
		t.Fatal("another key was held back")
	}
	clk.Advance(59 * time.Second)
	if ok, _ := g.Pass("a"); ok {
		t.Fatal("passed before the interval ended")
	}
	clk.Advance(time.Second)
	if ok, held := g.Pass("a"); !ok || held != 4 {
		t.Fatalf("after the interval: %v, held %d, want true 4", ok, held)
	}
}

// TestGateBoundedKeys: a flood of distinct keys never grows the gate beyond
// its bound; once their interval passes, new keys are let through again.
func TestGateBoundedKeys(t *testing.T) {
	clk := testkit.NewClock(time.Unix(1000, 0))
	g := NewGate(time.Minute, 100, clk.Now)
	passed := 0
	for i := 0; i < 10000; i++ {
		if ok, _ := g.Pass(fmt.Sprint("k", i)); ok {
			passed++
		}
	}
	if passed != 100 || g.Len() != 100 {
		t.Fatalf("%d passed, %d remembered; want 100 and 100", passed, g.Len())
	}
	clk.Advance(time.Minute)
	if ok, _ := g.Pass("new"); !ok {
		t.Fatal("a new key was held back after every remembered key expired")
	}
	if g.Len() != 1 {
		t.Fatalf("%d keys remembered after the prune, want 1", g.Len())
	}
}
