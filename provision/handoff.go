package provision

// The outbox. A registration that needs I/O outside the service (a custom
// allocation webhook, or registering the device in a hub that has a
// connector) is not decided inside the register request: the request
// writes, in one durable step, the operation as assigning and a job that
// describes the work (store.EnqueueJob), and answers 202 assigning. A
// bounded pool of workers (Run) claims due jobs from the store under a
// lease, does the webhook and connector I/O, and records the registration
// and the operation's final state in one durable step that also ends the
// job (store.FinishJob). A registration without such I/O takes the
// synchronous path (assign.go) as before.
//
// What this guarantees:
//   - a device is answered assigned only after its identity exists in its
//     hub: the record is written after the connector succeeded;
//   - nothing is half done: a failure writes a failed registration and
//     never an assigned one; every step can be done again (a hub identity
//     is created or updated by device id, never twice), so a crash at any
//     moment, or a lost lease, only means the job is done again;
//   - pending jobs survive a restart: they are in the store (bbolt ends a
//     crashed process's leases when it opens; a cluster engine lets them
//     expire), and one node at a time works on a job (the lease, and
//     FinishJob refusing an owner that lost it);
//   - a slow hub delays registrations rather than losing them: a failed
//     attempt that may succeed later (no answer, 429, 5xx) is retried with
//     exponential backoff (and the hub's Retry-After) until
//     HandoffConfig.Timeout after the register, then the registration fails
//     with ErrorCodeHubUnavailable; the outbox holds at most
//     HandoffConfig.MaxPending jobs, beyond which registers are answered
//     429 with retry-after.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// Defaults of HandoffConfig.
const (
	DefaultHandoffWorkers    = 8
	DefaultHandoffMaxPending = 10000
	DefaultHandoffTimeout    = 5 * time.Minute
	DefaultHandoffLease      = 2 * time.Minute
	DefaultHandoffRetryMin   = time.Second
	DefaultHandoffRetryMax   = 30 * time.Second
	DefaultHandoffPoll       = time.Second
	DefaultHandoffRetryAfter = time.Second
)

// HandoffConfig tunes the outbox and its workers. Zero fields take the
// defaults above.
type HandoffConfig struct {
	// Workers is how many jobs are worked on at once by this service.
	Workers int
	// MaxPending bounds the jobs in the store (all nodes together); a
	// register beyond it is answered 429.
	MaxPending int
	// Timeout is how long after the register a job may keep retrying;
	// then the registration fails (or a custom allocation falls back).
	Timeout time.Duration
	// Lease is how long a claimed job is this service's alone; an attempt
	// is bounded by half of it.
	Lease time.Duration
	// RetryMin and RetryMax bound the exponential backoff between attempts.
	RetryMin, RetryMax time.Duration
	// Poll is how often idle workers look for due jobs (a register on this
	// service wakes them at once).
	Poll time.Duration
	// RetryAfter is the retry-after of the 202 answers of a registration
	// in the outbox (and of a 429 when it is full).
	RetryAfter time.Duration
}

// withDefaults fills zero fields and checks the rest.
func (c *HandoffConfig) withDefaults() error {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.Workers == 0 {
		c.Workers = DefaultHandoffWorkers
	}
	if c.MaxPending == 0 {
		c.MaxPending = DefaultHandoffMaxPending
	}
	def(&c.Timeout, DefaultHandoffTimeout)
	def(&c.Lease, DefaultHandoffLease)
	def(&c.RetryMin, DefaultHandoffRetryMin)
	def(&c.RetryMax, DefaultHandoffRetryMax)
	def(&c.Poll, DefaultHandoffPoll)
	def(&c.RetryAfter, DefaultHandoffRetryAfter)
	switch {
	case c.Workers < 0 || c.MaxPending < 0:
		return fmt.Errorf("%w: Handoff.Workers and Handoff.MaxPending must not be negative", ErrInvalidConfig)
	case c.Timeout < 0 || c.Lease < 0 || c.RetryMin < 0 || c.RetryMax < c.RetryMin || c.Poll < 0 || c.RetryAfter < 0:
		return fmt.Errorf("%w: bad Handoff durations", ErrInvalidConfig)
	}
	return nil
}

// handoffState is the outbox's memory in one service: safe to lose.
type handoffState struct {
	owner string        // this service's lease owner id (its run id)
	wake  chan struct{} // a register enqueued: look for jobs now
}

func (h *handoffState) init(run runID) {
	h.owner = "dpsd-" + hex.EncodeToString(run[:])
	h.wake = make(chan struct{}, 1)
}

// notify wakes the dispatcher without blocking.
func (h *handoffState) notify() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// Run works on the outbox until ctx ends: it claims due jobs, up to
// HandoffConfig.Workers at a time, and works on each (handoffjob.go). It
// returns after the jobs in progress have stopped (their leases are
// released so that another run takes them at once). dpsd serve runs it for
// the life of the service; a Service nobody runs leaves registrations that
// need outside I/O assigning until another node takes them.
func (s *Service) Run(ctx context.Context) error {
	cfg := s.cfg.Handoff
	var wg sync.WaitGroup
	defer wg.Wait()
	done := make(chan struct{}, cfg.Workers)
	busy := 0
	tick := time.NewTicker(cfg.Poll)
	defer tick.Stop()
	for {
		// Reap finished workers without waiting.
		for reaped := false; !reaped; {
			select {
			case <-done:
				busy--
			default:
				reaped = true
			}
		}
		claimed := 0
		if free := cfg.Workers - busy; free > 0 && ctx.Err() == nil {
			jobs, err := s.cfg.Store.ClaimJobs(ctx, s.handoff.owner, cfg.Lease, free)
			if err != nil && ctx.Err() == nil {
				s.log.LogAttrs(ctx, slog.LevelWarn, "outbox: claiming jobs failed", slog.String("error", err.Error()))
			}
			for _, j := range jobs {
				busy++
				claimed++
				wg.Go(func() {
					defer func() { done <- struct{}{} }()
					s.work(ctx, j)
				})
			}
			if claimed > 0 && claimed == free {
				continue // there may be more due: claim again once a worker frees
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.handoff.wake:
		case <-tick.C:
		case <-done:
			busy--
		}
	}
}

// backoff is the delay before attempt n+1 (n attempts made): RetryMin
// doubling up to RetryMax, with ±20 % jitter, and at least hint (the
// hub's or webhook's Retry-After).
func (s *Service) backoff(attempts int, hint time.Duration) time.Duration {
	cfg := s.cfg.Handoff
	d := cfg.RetryMin
	for i := 1; i < attempts && d < cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, cfg.RetryMax)
	d = time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	return max(d, hint)
}

// leaseLost reports a store answer that the job is no longer ours.
func leaseLost(err error) bool {
	return errors.Is(err, store.ErrPreconditionFailed)
}
