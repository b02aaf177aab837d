package device

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff says how requests answered 429 (throttled) or 5xx are retried.
// The zero value gives the defaults.
type Backoff struct {
	// Initial is the base delay of the first retry (default 1 s). The n-th
	// retry waits a random time in [d/2, d) with d = Initial * 2^n, capped by Max.
	Initial time.Duration
	// Max caps the computed delay (default 30 s).
	Max time.Duration
	// MaxAttempts bounds how often one request is sent (default 8).
	MaxAttempts int
	// Rand returns a number in [0, 1) for the jitter (default math/rand/v2.Float64).
	Rand func() float64
}

func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = time.Second
	}
	if b.Max <= 0 {
		b.Max = 30 * time.Second
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.MaxAttempts <= 0 {
		b.MaxAttempts = 8
	}
	if b.Rand == nil {
		b.Rand = rand.Float64
	}
	return b
}

// Delay returns the wait before retry number retry (0 for the first retry)
// after a 429 or 5xx answer. A retry-after from the broker is a floor: the
// device never asks again sooner than it was told to, and the jitter spreads
// a crowd of throttled devices so they do not come back together.
func (b Backoff) Delay(retry int, retryAfter time.Duration) time.Duration {
	b = b.withDefaults()
	d := b.Initial
	for i := 0; i < retry && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	r := b.Rand()
	if r < 0 || r >= 1 {
		r = 0
	}
	d = d/2 + time.Duration(r*float64(d/2))
	return max(d, retryAfter)
}

// sleepCtx waits for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
