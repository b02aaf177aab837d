package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// NewJob returns a pending job with data and a secret, due at notBefore.
func NewJob(id, reg string, notBefore time.Time) *store.Job {
	return &store.Job{ID: id, RegistrationID: reg, Data: json.RawMessage(`{"step":"hub","hub":"h1.example.net"}`),
		Secret: []byte("job-secret-0123456789abcdef-" + id), NotBefore: notBefore.UTC()}
}

// assigning returns the operation a job completes, still assigning.
func assigning(id, reg string, exp time.Time) *store.Operation {
	return &store.Operation{ID: id, RegistrationID: reg, Status: store.RegistrationAssigning,
		CreatedAt: exp.Add(-time.Hour).UTC(), ExpiresAt: exp.UTC()}
}

// jobLifecycle: a job is written with its operation in one step, claimed
// when due by one owner at a time (another owner gets it only once the
// lease has expired), released with its progress, and finished together
// with the registration and the final operation; an owner that lost the
// job can neither release nor finish it; the job and its secret survive a
// reopen.
func (s *suite) jobLifecycle(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	now := clock.Now()
	exp := now.Add(time.Hour)
	j1 := NewJob("op-1", "reg-1", now)
	orig, _ := json.Marshal(j1)
	if err := st.EnqueueJob(ctx, assigning("op-1", "reg-1", exp), j1, 0); err != nil {
		t.Fatal(err)
	}
	if after, _ := json.Marshal(j1); !bytes.Equal(orig, after) {
		t.Fatal("EnqueueJob modified its argument")
	}
	if op, err := st.GetOperation(ctx, "op-1"); err != nil || op.Status != store.RegistrationAssigning {
		t.Fatalf("operation written with the job: %+v %v", op, err)
	}
	// A second job due later, a third due now.
	if err := st.EnqueueJob(ctx, assigning("op-2", "reg-2", exp), NewJob("op-2", "reg-2", now.Add(time.Minute)), 0); err != nil {
		t.Fatal(err)
	}
	if err := st.EnqueueJob(ctx, assigning("op-3", "reg-3", exp), NewJob("op-3", "reg-3", now.Add(-time.Second)), 0); err != nil {
		t.Fatal(err)
	}
	if n, err := st.CountJobs(ctx); err != nil || n != 3 {
		t.Fatalf("count %d %v", n, err)
	}
	// Due now: op-3 (earlier) then op-1; op-2 is not due.
	got, err := st.ClaimJobs(ctx, "node-a", time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != "op-3" || got[1].ID != "op-1" {
		t.Fatalf("claimed %v, want op-3 then op-1", jobIDs(got))
	}
	c1 := got[1]
	if c1.Owner != "node-a" || !c1.LeaseExpires.Equal(now.Add(time.Minute)) || !bytes.Equal(c1.Secret, j1.Secret) ||
		!bytes.Equal(c1.Data, j1.Data) || c1.RegistrationID != "reg-1" || !c1.NotBefore.Equal(j1.NotBefore) || c1.CreatedAt.IsZero() {
		t.Fatalf("claimed job: %+v", c1)
	}
	// Leased jobs are nobody else's until the lease expires.
	if more, err := st.ClaimJobs(ctx, "node-b", time.Minute, 10); err != nil || len(more) != 0 {
		t.Fatalf("claimed leased jobs: %v %v", jobIDs(more), err)
	}
	// The owner releases op-1 with progress, due in 10 s.
	rel := *c1
	rel.Data = json.RawMessage(`{"step":"done"}`)
	rel.Secret = []byte("new-secret")
	rel.Attempts = 3
	rel.NotBefore = now.Add(10 * time.Second)
	wrong := rel
	wrong.Owner = "node-b"
	if err := st.ReleaseJob(ctx, &wrong); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("release by another owner: %v", err)
	}
	if err := st.ReleaseJob(ctx, &rel); err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseJob(ctx, &rel); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("second release of a pending job: %v", err)
	}
	// After 61 s: op-3's lease has expired, op-1 and op-2 are due.
	clock.Advance(61 * time.Second)
	got, err = st.ClaimJobs(ctx, "node-b", time.Minute, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != "op-1" || got[1].ID != "op-2" {
		t.Fatalf("claimed %v, want op-1 (due at +10s) then op-2 (+60s), max 2", jobIDs(got))
	}
	if got[0].Attempts != 3 || string(got[0].Data) != `{"step":"done"}` || string(got[0].Secret) != "new-secret" || got[0].Owner != "node-b" {
		t.Fatalf("released progress: %+v", got[0])
	}
	got3, err := st.ClaimJobs(ctx, "node-b", time.Minute, 10)
	if err != nil || len(got3) != 1 || got3[0].ID != "op-3" {
		t.Fatalf("expired lease reclaimed: %v %v", jobIDs(got3), err)
	}
	// node-a lost op-3: it can neither release nor finish it.
	lost := *got3[0]
	lost.Owner = "node-a"
	if err := st.ReleaseJob(ctx, &lost); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("release of a lost job: %v", err)
	}
	final := FullOperation("op-3", "reg-3", exp)
	if _, err := st.FinishJob(ctx, "op-3", "node-a", FullRegistration("reg-3", ""), final); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("finish of a lost job: %v", err)
	}
	if _, err := st.GetRegistration(ctx, "reg-3"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused finish wrote the registration: %v", err)
	}
	if op, _ := st.GetOperation(ctx, "op-3"); op.Status != store.RegistrationAssigning {
		t.Fatalf("a refused finish wrote the operation: %+v", op)
	}
	// The holder finishes it: registration, operation and the job's end in one step.
	reg, err := st.FinishJob(ctx, "op-3", "node-b", FullRegistration("reg-3", "grp"), final)
	if err != nil {
		t.Fatal(err)
	}
	if reg.ETag == "" || !reg.CreatedAt.Equal(clock.Now()) || !bytes.Equal(reg.HubKey, FullRegistration("", "").HubKey) {
		t.Fatalf("finished registration: %+v", reg)
	}
	back, err := st.GetRegistration(ctx, "REG-3")
	if err != nil || back.ETag != reg.ETag || !bytes.Equal(back.HubKey, reg.HubKey) {
		t.Fatalf("registration after finish: %+v %v", back, err)
	}
	if n, _ := st.CountGroupRegistrations(ctx, "grp"); n != 1 {
		t.Fatalf("group index after finish: %d", n)
	}
	if op, err := st.GetOperation(ctx, "op-3"); err != nil || op.Status != store.RegistrationAssigned || !bytes.Equal(op.AuthenticationKey, final.AuthenticationKey) {
		t.Fatalf("operation after finish: %+v %v", op, err)
	}
	if _, err := st.FinishJob(ctx, "op-3", "node-b", nil, final); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("second finish: %v", err)
	}
	// A finish without a registration writes only the operation.
	if r, err := st.FinishJob(ctx, "op-2", "node-b", nil, FullOperation("op-2", "reg-2", exp)); err != nil || r != nil {
		t.Fatalf("finish without registration: %v %v", r, err)
	}
	if _, err := st.GetRegistration(ctx, "reg-2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("registration written by a finish without one: %v", err)
	}
	if n, _ := st.CountJobs(ctx); n != 1 {
		t.Fatalf("count after two finishes: %d", n)
	}
	// Jobs are not operations: Sweep leaves them alone.
	if _, err := st.Sweep(ctx, exp.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, _ := st.CountJobs(ctx); n != 1 {
		t.Fatalf("count after sweep: %d", n)
	}
	s.check(t, st)
	// op-1 is still leased to node-b; a reopened store keeps the job and its
	// secret (an engine may end leases at open: see its documentation).
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	r := s.e.Reopen(t, st)
	clock.Advance(2 * time.Minute)
	again, err := r.ClaimJobs(ctx, "node-c", time.Minute, 10)
	if err != nil || len(again) != 1 || again[0].ID != "op-1" || string(again[0].Secret) != "new-secret" || again[0].Attempts != 3 {
		t.Fatalf("after reopen: %v %v", jobIDs(again), err)
	}
	s.check(t, r)
}

// jobLimit: EnqueueJob with maxPending refuses (a *LimitError, nothing
// written, not even the operation) when that many jobs exist; replacing a
// job by its id does not count twice; invalid jobs are refused.
func (s *suite) jobLimit(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	exp := clock.Now().Add(time.Hour)
	for i := range 2 {
		id := fmt.Sprint("op-", i)
		if err := st.EnqueueJob(ctx, assigning(id, "r", exp), NewJob(id, "r", clock.Now()), 2); err != nil {
			t.Fatal(err)
		}
	}
	err := st.EnqueueJob(ctx, assigning("op-x", "r", exp), NewJob("op-x", "r", clock.Now()), 2)
	var le *store.LimitError
	if !errors.As(err, &le) || !errors.Is(err, store.ErrLimit) || le.Limit != 2 {
		t.Fatalf("third job with maxPending 2: %v", err)
	}
	if _, err := st.GetOperation(ctx, "op-x"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused job's operation was written: %v", err)
	}
	// Replacing an existing job is not a new one.
	repl := NewJob("op-1", "r", clock.Now())
	repl.Data = json.RawMessage(`{"replaced":true}`)
	if err := st.EnqueueJob(ctx, assigning("op-1", "r", exp), repl, 2); err != nil {
		t.Fatalf("replace at the limit: %v", err)
	}
	if n, _ := st.CountJobs(ctx); n != 2 {
		t.Fatalf("count %d", n)
	}
	got, err := st.ClaimJobs(ctx, "o", time.Minute, 10)
	if err != nil || len(got) != 2 {
		t.Fatalf("claim: %v %v", jobIDs(got), err)
	}
	for _, j := range got {
		if j.ID == "op-1" && string(j.Data) != `{"replaced":true}` {
			t.Fatalf("replaced job: %s", j.Data)
		}
	}
	for name, call := range map[string]func() error{
		"nil op":  func() error { return st.EnqueueJob(ctx, nil, NewJob("a", "r", exp), 0) },
		"nil job": func() error { return st.EnqueueJob(ctx, assigning("a", "r", exp), nil, 0) },
		"bad data": func() error {
			j := NewJob("a", "r", exp)
			j.Data = json.RawMessage("{")
			return st.EnqueueJob(ctx, assigning("a", "r", exp), j, 0)
		},
		"op expiry":  func() error { return st.EnqueueJob(ctx, &store.Operation{ID: "a"}, NewJob("a", "r", exp), 0) },
		"no owner":   func() error { _, err := st.ClaimJobs(ctx, "", time.Minute, 1); return err },
		"no lease":   func() error { _, err := st.ClaimJobs(ctx, "o", 0, 1); return err },
		"nil finish": func() error { _, err := st.FinishJob(ctx, "op-1", "o", nil, nil); return err },
	} {
		if err := call(); !errors.Is(err, store.ErrInvalidRecord) {
			t.Errorf("%s: %v, want ErrInvalidRecord", name, err)
		}
	}
	if err := st.EnqueueJob(ctx, assigning("", "r", exp), NewJob("", "r", exp), 0); !errors.Is(err, store.ErrInvalidID) && !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("empty job id: %v", err)
	}
	s.check(t, st)
}

// concurrentClaims: owners claiming at once never get the same job.
func (s *suite) concurrentClaims(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	const n = 60
	exp := clock.Now().Add(time.Hour)
	for i := range n {
		id := fmt.Sprintf("op-%02d", i)
		if err := st.EnqueueJob(ctx, assigning(id, "r", exp), NewJob(id, "r", clock.Now()), 0); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string]string{}
	var wg sync.WaitGroup
	for w := range 6 {
		owner := fmt.Sprint("node-", w)
		wg.Go(func() {
			for {
				got, err := st.ClaimJobs(ctx, owner, time.Hour, 3)
				if err != nil {
					t.Error(err)
					return
				}
				if len(got) == 0 {
					return
				}
				mu.Lock()
				for _, j := range got {
					if prev, dup := seen[j.ID]; dup {
						t.Errorf("%s claimed by %s and %s", j.ID, prev, owner)
					}
					seen[j.ID] = owner
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("claimed %d of %d jobs", len(seen), n)
	}
	s.check(t, st)
}

func jobIDs(js []*store.Job) []string {
	out := make([]string, len(js))
	for i, j := range js {
		out[i] = j.ID
	}
	return out
}
