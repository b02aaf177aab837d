package testkit

import (
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestPoll: Poll returns as soon as the condition holds, and false once
// the bound passes (in a synctest bubble: no real time is spent).
func TestPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var done atomic.Bool
		time.AfterFunc(3*time.Second, func() { done.Store(true) })
		if !Poll(DefaultWait, done.Load) {
			t.Fatal("Poll gave up on a condition that became true")
		}
		calls := 0
		if Poll(time.Second, func() bool { calls++; return false }) {
			t.Fatal("Poll reported a condition that never held")
		}
		if calls < 2 {
			t.Fatalf("cond called %d times", calls)
		}
	})
}
