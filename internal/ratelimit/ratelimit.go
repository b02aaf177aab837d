// Package ratelimit provides keyed token buckets (per remote address, or one
// global key) and keyed counters of concurrent holders. The broker uses them
// to bound connection attempts and TPM challenge issuance without letting an
// attacker grow memory without bound: idle keys are pruned.
package ratelimit

import (
	"math"
	"sync"
	"time"
)

// maxIdleKeys is how many keys a Limiter keeps before it prunes full buckets.
const maxIdleKeys = 4096

// Limiter is a set of token buckets keyed by string: each key may spend Burst
// tokens at once and regains Rate tokens per second. A zero or negative Rate
// disables the limiter (Allow always succeeds). Safe for concurrent use.
type Limiter struct {
	rate  float64
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New returns a Limiter granting perSecond tokens per second per key, at most
// burst at once (burst < 1 is treated as 1). now is the clock (nil: time.Now).
func New(perSecond float64, burst int, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	if burst < 1 {
		burst = 1
	}
	return &Limiter{rate: perSecond, burst: float64(burst), now: now, buckets: make(map[string]*bucket)}
}

// PerMinute converts a count per minute to the per-second rate New takes.
func PerMinute(n int) float64 { return float64(n) / 60 }

// Allow spends one token of key. When none is left it returns false and how
// long until one is available.
func (l *Limiter) Allow(key string) (bool, time.Duration) {
	if l == nil || l.rate <= 0 {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketLocked(key, now)
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration(math.Ceil((1 - b.tokens) / l.rate * float64(time.Second)))
	return false, wait
}

// Ready reports whether key has a token, without spending it, and if not
// how long until it has one. A key never charged has a full bucket. With
// Charge it makes a budget of failures: admit while Ready, charge each
// failure once it is known.
func (l *Limiter) Ready(key string) (bool, time.Duration) {
	if l == nil || l.rate <= 0 {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		return true, 0
	}
	l.refill(b, now)
	if b.tokens >= 1 {
		return true, 0
	}
	return false, time.Duration(math.Ceil((1 - b.tokens) / l.rate * float64(time.Second)))
}

// Charge spends one token of key even when none is left: the balance may
// fall to -burst, a debt repaid at the same rate. Failures that were already
// being decided when the budget ran out (Ready said yes to each) are thus
// still paid for, so concurrency does not raise the long-run rate.
func (l *Limiter) Charge(key string) {
	if l == nil || l.rate <= 0 {
		return
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketLocked(key, now)
	b.tokens = math.Max(b.tokens-1, -l.burst)
}

// refill adds the tokens earned since the bucket was last touched.
func (l *Limiter) refill(b *bucket, now time.Time) {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = math.Min(l.burst, b.tokens+el*l.rate)
	}
	b.last = now
}

// pruneLocked drops buckets that have refilled completely: forgetting them
// changes nothing for their keys.
func (l *Limiter) pruneLocked(now time.Time) {
	for k, b := range l.buckets {
		l.refill(b, now)
		if b.tokens >= l.burst {
			delete(l.buckets, k)
		}
	}
}

// Len reports how many keys are tracked (for tests and metrics).
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// Bucket is a single token bucket for one owner (one connection, say). It
// is not safe for concurrent use: its owner serialises the calls.
type Bucket struct {
	rate, burst float64
	b           bucket
}

// NewBucket returns a full bucket granting perSecond tokens per second, at
// most burst at once (burst < 1 is treated as 1). A zero or negative rate
// gives a bucket that always allows.
func NewBucket(perSecond float64, burst int, now time.Time) *Bucket {
	if burst < 1 {
		burst = 1
	}
	return &Bucket{rate: perSecond, burst: float64(burst), b: bucket{tokens: float64(burst), last: now}}
}

// Allow spends one token at time now, or reports how long until one is back.
func (k *Bucket) Allow(now time.Time) (bool, time.Duration) {
	if k == nil || k.rate <= 0 {
		return true, 0
	}
	if el := now.Sub(k.b.last).Seconds(); el > 0 {
		k.b.tokens = math.Min(k.burst, k.b.tokens+el*k.rate)
	}
	k.b.last = now
	if k.b.tokens >= 1 {
		k.b.tokens--
		return true, 0
	}
	return false, time.Duration(math.Ceil((1 - k.b.tokens) / k.rate * float64(time.Second)))
}

// Counter counts concurrent holders per key and refuses beyond Max. A Max of
// zero or less disables the cap. Safe for concurrent use.
type Counter struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

// NewCounter returns a Counter allowing max concurrent holders per key.
func NewCounter(max int) *Counter { return &Counter{max: max, n: make(map[string]int)} }

// Acquire takes a slot for key; it reports false (taking nothing) when the
// key is at its cap. Every successful Acquire must be paired with Release.
func (c *Counter) Acquire(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.max > 0 && c.n[key] >= c.max {
		return false
	}
	c.n[key]++
	return true
}

// Release returns a slot taken by Acquire.
func (c *Counter) Release(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[key] <= 1 {
		delete(c.n, key)
		return
	}
	c.n[key]--
}

// Count reports the holders of key.
func (c *Counter) Count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// bucketLocked returns key's bucket refilled up to now, making a full one
// (and pruning idle keys when the table is at its bound) for a new key.
func (l *Limiter) bucketLocked(key string, now time.Time) *bucket {
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxIdleKeys {
			l.pruneLocked(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	l.refill(b, now)
	return b
}
