package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// challengeRecorder: an engine that implements store.ChallengeRecorder
// lets exactly one of many concurrent uses of a challenge through, keeps
// that use across a reopen (a restarted node refuses it too), tells
// challenges apart, and refuses bad ids and a closed store.
func (s *suite) challengeRecorder(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	cr, ok := st.(store.ChallengeRecorder)
	if !ok {
		t.Logf("%T does not implement store.ChallengeRecorder: the service keeps used challenges in memory", st)
		return
	}
	exp := clock.Now().Add(10 * time.Minute)
	id := []byte("t2-challenge-0123456789abcdef012")
	const racers = 16
	var wg sync.WaitGroup
	errs := make([]error, racers)
	for i := range racers {
		wg.Go(func() { errs[i] = cr.UseChallenge(ctx, id, exp) })
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, store.ErrChallengeUsed):
			t.Fatalf("use: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d concurrent uses of one challenge succeeded, want 1", won, racers)
	}
	if err := cr.UseChallenge(ctx, []byte("another challenge"), exp); err != nil {
		t.Fatalf("another challenge: %v", err)
	}
	for _, bad := range [][]byte{nil, make([]byte, 65)} {
		if err := cr.UseChallenge(ctx, bad, exp); !errors.Is(err, store.ErrInvalidID) {
			t.Errorf("id of %d bytes: %v", len(bad), err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cr.UseChallenge(ctx, []byte("x"), exp); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	r := s.e.Reopen(t, st).(store.ChallengeRecorder)
	if err := r.UseChallenge(ctx, id, exp); !errors.Is(err, store.ErrChallengeUsed) {
		t.Fatalf("a used challenge after reopening: %v, want ErrChallengeUsed", err)
	}
}

// windowCounter: an engine that implements store.WindowCounter counts
// concurrent adds exactly once each, per name, and starts again at one in
// the next window.
func (s *suite) windowCounter(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	wc, ok := st.(store.WindowCounter)
	if !ok {
		t.Logf("%T does not implement store.WindowCounter: rate limits are per process", st)
		return
	}
	const window = 10 * time.Second
	const workers, each = 8, 25
	var mu sync.Mutex
	var counts []int64
	var ends []time.Time
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				n, end, err := wc.CountInWindow(ctx, "poll/dev-1", window)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				counts = append(counts, n)
				ends = append(ends, end)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(counts)
	for i, n := range counts {
		if n != int64(i+1) {
			t.Fatalf("counts %v: want each of 1..%d once", counts, workers*each)
		}
	}
	wantEnd := clock.Now().Truncate(window).Add(window)
	for _, e := range ends {
		if !e.Equal(wantEnd) {
			t.Fatalf("window end %v, want %v", e, wantEnd)
		}
	}
	if n, _, err := wc.CountInWindow(ctx, "poll/dev-2", window); err != nil || n != 1 {
		t.Fatalf("another name: %d %v", n, err)
	}
	clock.Advance(window)
	if n, end, err := wc.CountInWindow(ctx, "poll/dev-1", window); err != nil || n != 1 || !end.Equal(wantEnd.Add(window)) {
		t.Fatalf("next window: %d %v %v", n, end, err)
	}
}

// registrationLister: an engine that implements store.RegistrationLister
// lists every registration once, in or out of a group, and counts them.
func (s *suite) registrationLister(t *testing.T) {
	ctx := context.Background()
	st := s.open(t, nil)
	rl, ok := st.(store.RegistrationLister)
	if !ok {
		t.Logf("%T does not implement store.RegistrationLister", st)
		return
	}
	want := map[string]bool{}
	for i := range 120 {
		id := fmt.Sprintf("Reg-%03d", i)
		group := ""
		if i%3 == 0 {
			group = "g"
		}
		if _, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: id, EnrollmentGroupID: group}, nil); err != nil {
			t.Fatal(err)
		}
		want[id] = true
	}
	// Neither kind of record is a registration.
	if _, err := st.PutEnrollment(ctx, FullEnrollment("Reg-500"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutGroup(ctx, FullGroup("Reg-501"), ""); err != nil {
		t.Fatal(err)
	}
	ids := PageAll(t, 7, func(q store.Query) (store.Page[*store.Registration], error) { return rl.ListRegistrations(ctx, q) }, func(r *store.Registration) string { return r.RegistrationID })
	checkExactlyOnce(t, "registrations", ids, want)
	if n, err := rl.CountRegistrations(ctx); err != nil || n != len(want) {
		t.Fatalf("count %d %v, want %d", n, err, len(want))
	}
	p, err := rl.ListRegistrations(ctx, store.Query{MaxItems: 1})
	if err != nil || p.Continuation == "" {
		t.Fatal(err)
	}
	if _, err := st.ListEnrollments(ctx, store.Query{Continuation: p.Continuation}); !errors.Is(err, store.ErrBadContinuation) {
		t.Fatalf("a registrations token accepted by enrollments: %v", err)
	}
	s.check(t, st)
}
