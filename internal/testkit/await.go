package testkit

import (
	"testing"
	"time"
)

// DefaultWait bounds Await: generous, because it is only reached when the
// awaited thing does not happen (the test then fails), never when it does.
const DefaultWait = 10 * time.Second

// Await polls cond until it holds, and fails the test (naming what it
// waited for) when DefaultWait passes first. It is for conditions that a
// real socket, process or goroutine makes true; code that only waits on
// timers and channels is better tested inside testing/synctest.
func Await(t testing.TB, what string, cond func() bool) {
	t.Helper()
	AwaitWithin(t, DefaultWait, what, cond)
}

// AwaitWithin is Await with the bound d.
func AwaitWithin(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Poll(d, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// Poll calls cond until it returns true (then Poll does too) or d passes
// (then Poll returns false after one last call). The pause between calls
// grows from 1 ms to 20 ms.
func Poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	pause := time.Millisecond
	timer := time.NewTimer(pause)
	defer timer.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return cond()
		}
		timer.Reset(pause)
		<-timer.C
		pause = min(2*pause, 20*time.Millisecond)
	}
	return true
}
