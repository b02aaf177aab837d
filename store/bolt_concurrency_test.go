package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrentWriters runs many goroutines that record registrations (some
// moving between groups), write operations and race for the same challenge
// references: no record is lost or doubled, and each reference succeeds
// exactly once.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s := openTest(t, clock)
	const (
		workers   = 32
		perWorker = 25
		refs      = 200
		shared    = 20 // registrations every worker re-records, changing group
	)
	wins := make([]atomic.Int32, refs)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := make(chan struct{})
	exp := clock.Now().Add(time.Hour)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range perWorker {
				id := fmt.Sprintf("W%02d-%03d", w, i)
				op := &Operation{ID: "op-" + id, RegistrationID: id, Status: RegistrationAssigned, ExpiresAt: exp}
				got, err := s.RecordRegistration(ctx, &Registration{RegistrationID: id, Status: RegistrationAssigned,
					EnrollmentGroupID: fmt.Sprint("g", i%3), HubKey: []byte(id)}, op)
				if err != nil {
					errs <- err
					return
				}
				if got.ETag == "" || got.RegistrationID != id {
					errs <- fmt.Errorf("returned %+v", got)
					return
				}
				sh := fmt.Sprintf("shared-%02d", (i+w)%shared)
				if _, err := s.RecordRegistration(ctx, &Registration{RegistrationID: sh, EnrollmentGroupID: fmt.Sprint("g", w%4)}, nil); err != nil {
					errs <- err
					return
				}
			}
			// Every reference is tried by 8 workers, in different orders.
			for k := range refs {
				j := (k + w*13) % refs
				if j%4 != w%4 {
					continue
				}
				err := s.UseChallenge(ctx, fmt.Sprintf("ref-%d", j), exp)
				switch {
				case err == nil:
					wins[j].Add(1)
				case errors.Is(err, ErrChallengeUsed):
				default:
					errs <- err
					return
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range wins {
		if n := wins[i].Load(); n != 1 {
			t.Fatalf("ref-%d succeeded %d times", i, n)
		}
	}
	for w := range workers {
		for i := range perWorker {
			id := fmt.Sprintf("w%02d-%03d", w, i)
			r, err := s.GetRegistration(ctx, id)
			if err != nil {
				t.Fatalf("lost %s: %v", id, err)
			}
			if string(r.HubKey) != fmt.Sprintf("W%02d-%03d", w, i) {
				t.Fatalf("%s hub key %q", id, r.HubKey)
			}
			if _, err := s.GetOperation(ctx, "op-"+r.RegistrationID); err != nil {
				t.Fatalf("operation of %s: %v", id, err)
			}
		}
	}
	total := 0
	for g := range 4 {
		n, err := s.CountGroupRegistrations(ctx, fmt.Sprint("g", g))
		if err != nil {
			t.Fatal(err)
		}
		p := pageAll(t, 50, func(q Query) (Page[*Registration], error) {
			return s.ListGroupRegistrations(ctx, fmt.Sprint("G", g), q)
		},
			func(r *Registration) string { return r.RegistrationID })
		if len(p) != n {
			t.Fatalf("g%d: listed %d, counted %d", g, len(p), n)
		}
		total += n
	}
	if want := workers*perWorker + shared; total != want {
		t.Fatalf("registrations in groups: %d, want %d", total, want)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}
