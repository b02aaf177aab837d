package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// operationExpiryAndSweep: an operation is hidden from its expiry on
// (now >= ExpiresAt), re-putting it moves its expiry, and Sweep deletes
// exactly the expired ones.
func (s *suite) operationExpiryAndSweep(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	exp := clock.Now().Add(time.Minute)
	if err := st.PutOperation(ctx, FullOperation("op-a", "r", exp)); err != nil {
		t.Fatal(err)
	}
	if err := st.PutOperation(ctx, FullOperation("op-b", "r", exp.Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	// Re-putting moves the expiry: op-c first expires early, then is extended.
	if err := st.PutOperation(ctx, FullOperation("op-c", "r", exp)); err != nil {
		t.Fatal(err)
	}
	if err := st.PutOperation(ctx, FullOperation("op-c", "r", exp.Add(2*time.Hour))); err != nil {
		t.Fatal(err)
	}
	// And the other way: op-d is shortened.
	if err := st.PutOperation(ctx, FullOperation("op-d", "r", exp.Add(3*time.Hour))); err != nil {
		t.Fatal(err)
	}
	if err := st.PutOperation(ctx, FullOperation("op-d", "r", exp)); err != nil {
		t.Fatal(err)
	}
	if n, err := st.Sweep(ctx, clock.Now()); err != nil || n != 0 {
		t.Fatalf("early sweep: %d %v", n, err)
	}
	clock.Advance(time.Minute - time.Nanosecond)
	if _, err := st.GetOperation(ctx, "op-a"); err != nil {
		t.Fatalf("an operation a nanosecond before its expiry: %v", err)
	}
	clock.Advance(time.Nanosecond) // now == exp: expired
	for _, id := range []string{"op-a", "op-d"} {
		if _, err := st.GetOperation(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("expired operation %s: %v", id, err)
		}
	}
	if _, err := st.GetOperation(ctx, "op-c"); err != nil {
		t.Fatalf("extended operation: %v", err)
	}
	s.check(t, st)
	n, err := st.Sweep(ctx, clock.Now())
	if err != nil || n != 2 { // op-a, op-d
		t.Fatalf("sweep: %d %v", n, err)
	}
	if n, _ := st.Sweep(ctx, clock.Now()); n != 0 {
		t.Fatalf("second sweep: %d", n)
	}
	if _, err := st.GetOperation(ctx, "op-b"); err != nil {
		t.Fatalf("unexpired operation swept: %v", err)
	}
	// Swept is gone, also for a clock that goes back.
	clock.Advance(-time.Hour)
	if _, err := st.GetOperation(ctx, "op-a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("swept operation: %v", err)
	}
	n, err = st.Sweep(ctx, clock.Now().Add(24*time.Hour))
	if err != nil || n != 2 { // op-b, op-c
		t.Fatalf("final sweep: %d %v", n, err)
	}
	if _, err := st.GetOperation(ctx, "op-b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	// Sweep touches nothing but operations.
	if _, err := st.RecordRegistration(ctx, FullRegistration("r", ""), nil); err != nil {
		t.Fatal(err)
	}
	if n, err := st.Sweep(ctx, clock.Now().Add(1000*time.Hour)); err != nil || n != 0 {
		t.Fatalf("sweep with no operations: %d %v", n, err)
	}
	if _, err := st.GetRegistration(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	s.check(t, st)
}

// groupsRevision: every group write that writes, and only those, moves the
// revision; it never goes back, also across a reopen.
func (s *suite) groupsRevision(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	rev := func() uint64 {
		t.Helper()
		r, err := st.GroupsRevision(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r0 := rev()
	step := func(what string, wantChange bool, write func() error) {
		t.Helper()
		before := rev()
		err := write()
		after := rev()
		switch {
		case wantChange && (err != nil || after <= before):
			t.Fatalf("%s: %v, revision %d -> %d", what, err, before, after)
		case !wantChange && after != before:
			t.Fatalf("%s (%v): revision moved %d -> %d", what, err, before, after)
		}
	}
	var etag string
	step("create", true, func() error { g, err := st.PutGroup(ctx, FullGroup("g1"), ""); etag = g.ETag; return err })
	step("update", true, func() error { _, err := st.PutGroup(ctx, FullGroup("G1"), etag); return err })
	step("stale update", false, func() error { _, err := st.PutGroup(ctx, FullGroup("g1"), etag); return err })
	step("conditional create of a missing group", false, func() error { _, err := st.PutGroup(ctx, FullGroup("g2"), etag); return err })
	step("invalid group", false, func() error { _, err := st.PutGroup(ctx, &store.Group{}, ""); return err })
	step("reads", false, func() error {
		_, err1 := st.GetGroup(ctx, "g1")
		_, err2 := st.ListGroups(ctx, store.Query{})
		_, err3 := st.CountGroups(ctx)
		return errors.Join(err1, err2, err3)
	})
	step("enrollment write", false, func() error { _, err := st.PutEnrollment(ctx, FullEnrollment("g1"), ""); return err })
	step("enrollment delete", false, func() error { return st.DeleteEnrollment(ctx, "g1", "") })
	step("registration write", false, func() error {
		_, err := st.RecordRegistration(ctx, FullRegistration("r1", "g1"), FullOperation("op", "r1", clock.Now().Add(time.Second)))
		return err
	})
	step("registration delete", false, func() error { return st.DeleteRegistration(ctx, "r1", "") })
	step("operation write", false, func() error { return st.PutOperation(ctx, FullOperation("op2", "r1", clock.Now().Add(time.Second))) })
	step("sweep", false, func() error { _, err := st.Sweep(ctx, clock.Now().Add(time.Hour)); return err })
	step("delete missing", false, func() error { return st.DeleteGroup(ctx, "nope", "") })
	step("stale delete", false, func() error { return st.DeleteGroup(ctx, "g1", etag) })
	step("delete", true, func() error { return st.DeleteGroup(ctx, "g1", "") })
	step("create again", true, func() error { _, err := st.PutGroup(ctx, FullGroup("g1"), ""); return err })
	if rev() <= r0 {
		t.Fatal("revision did not grow")
	}
	last := rev()
	s.check(t, st)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GroupsRevision(ctx); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("closed store: %v", err)
	}
	st = s.e.Reopen(t, st)
	if got := rev(); got < last {
		t.Fatalf("revision after reopen %d, before %d: it went back", got, last)
	}
	step("create after reopen", true, func() error { _, err := st.PutGroup(ctx, FullGroup("g3"), ""); return err })
}

// groupLimit: with a group limit, creating a group beyond it is refused (a
// *LimitError wrapping ErrLimit) and writes nothing, updates of existing
// groups go on, and concurrent creates never overshoot.
func (s *suite) groupLimit(t *testing.T) {
	ctx := context.Background()
	st := s.e.Open(t, Options{Now: time.Now, MaxGroups: 10})
	var wg sync.WaitGroup
	errs := make([]error, 30)
	for i := range errs {
		wg.Go(func() { _, errs[i] = st.PutGroup(ctx, FullGroup(fmt.Sprintf("g%02d", i)), "") })
	}
	wg.Wait()
	var ok, limited int
	for _, err := range errs {
		var le *store.LimitError
		switch {
		case err == nil:
			ok++
		case errors.Is(err, store.ErrLimit) && errors.As(err, &le) && le.Limit == 10 && le.What == "enrollment groups":
			limited++
		default:
			t.Fatalf("unexpected error %v", err)
		}
	}
	if n, _ := st.CountGroups(ctx); ok != 10 || limited != 20 || n != 10 {
		t.Fatalf("%d created, %d refused, %d stored; want 10, 20, 10", ok, limited, n)
	}
	rev, _ := st.GroupsRevision(ctx)
	if _, err := st.PutGroup(ctx, FullGroup("one-too-many"), ""); !errors.Is(err, store.ErrLimit) {
		t.Fatalf("11th group: %v", err)
	}
	if _, err := st.GetGroup(ctx, "one-too-many"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused group was stored: %v", err)
	}
	if r, _ := st.GroupsRevision(ctx); r != rev {
		t.Fatal("a refused create moved the revision")
	}
	// An etag for a missing group is a failed precondition first.
	if _, err := st.PutGroup(ctx, FullGroup("one-too-many"), `"abc"`); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("conditional create at the limit: %v", err)
	}
	// Enrollments are not limited by it.
	if _, err := st.PutEnrollment(ctx, FullEnrollment("one-too-many"), ""); err != nil {
		t.Fatalf("an enrollment at the group limit: %v", err)
	}
	// Updating an existing group at the limit works.
	p, err := st.ListGroups(ctx, store.Query{})
	if err != nil || len(p.Items) != 10 {
		t.Fatalf("list: %v", err)
	}
	if _, err := st.PutGroup(ctx, FullGroup(p.Items[0].EnrollmentGroupID), p.Items[0].ETag); err != nil {
		t.Fatalf("update at the limit: %v", err)
	}
	if _, err := st.PutGroup(ctx, FullGroup(p.Items[0].EnrollmentGroupID), ""); err != nil {
		t.Fatalf("unconditional update at the limit: %v", err)
	}
	// One deleted, one more can be created.
	if err := st.DeleteGroup(ctx, p.Items[1].EnrollmentGroupID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutGroup(ctx, FullGroup("after-delete"), ""); err != nil {
		t.Fatalf("create after a delete: %v", err)
	}
	if _, err := st.PutGroup(ctx, FullGroup("and-no-more"), ""); !errors.Is(err, store.ErrLimit) {
		t.Fatalf("create beyond the limit again: %v", err)
	}
	s.check(t, st)
}

// bulkEnrollments: an engine that implements store.EnrollmentBatcher
// writes all or nothing, the last of duplicates wins, creation times are
// kept and each record is returned as stored, in the order given.
func (s *suite) bulkEnrollments(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	b, ok := st.(store.EnrollmentBatcher)
	if !ok {
		t.Logf("%T does not implement store.EnrollmentBatcher: nothing to check", st)
		return
	}
	first, err := st.PutEnrollment(ctx, FullEnrollment("m"), "")
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	in := []*store.Enrollment{FullEnrollment("z"), FullEnrollment("M"), FullEnrollment("a"), FullEnrollment("Z")}
	in[3].DeviceID = "last-wins"
	out, err := b.PutEnrollments(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("%d results for %d records", len(out), len(in))
	}
	for i := range in {
		if out[i].RegistrationID != in[i].RegistrationID || out[i].ETag == "" || !out[i].UpdatedAt.Equal(clock.Now()) {
			t.Fatalf("result %d: %+v", i, out[i])
		}
	}
	if !out[1].CreatedAt.Equal(first.CreatedAt) || out[1].ETag == first.ETag {
		t.Fatalf("created not preserved: %v", out[1].CreatedAt)
	}
	z, err := st.GetEnrollment(ctx, "z")
	if err != nil || z.DeviceID != "last-wins" || z.ETag != out[3].ETag {
		t.Fatalf("duplicate in one bulk call: %+v %v", z, err)
	}
	a, err := st.GetEnrollment(ctx, "A")
	if err != nil {
		t.Fatal(err)
	}
	SameJSON(t, "bulk-written record", a, out[2])
	if n, _ := st.CountEnrollments(ctx); n != 3 {
		t.Fatalf("count %d", n)
	}
	// All or nothing: one bad item writes nothing.
	if _, err := b.PutEnrollments(ctx, []*store.Enrollment{FullEnrollment("new"), {RegistrationID: ""}}); !errors.Is(err, store.ErrInvalidID) {
		t.Fatalf("bad item: %v", err)
	}
	if _, err := st.GetEnrollment(ctx, "new"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("partial bulk write: %v", err)
	}
	s.check(t, st)
}

// backup: Backup writes, while writers go on, a consistent copy that
// restores with every record and secret; a cancelled context stops it.
func (s *suite) backup(t *testing.T) {
	ctx := context.Background()
	st := s.open(t, nil)
	const n = 200
	for i := range n {
		if _, err := st.PutEnrollment(ctx, FullEnrollment(fmt.Sprint("e", i)), ""); err != nil {
			t.Fatal(err)
		}
		if _, err := st.RecordRegistration(ctx, FullRegistration(fmt.Sprint("r", i), "g"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.PutGroup(ctx, FullGroup("g"), ""); err != nil {
		t.Fatal(err)
	}
	// Writers keep going during the backup: the copy is a consistent snapshot.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var live atomic.Int64
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := st.RecordRegistration(ctx, FullRegistration(fmt.Sprint("live", i), "g"), nil); err != nil {
				t.Error(err)
				return
			}
			live.Add(1)
		}
	})
	var buf bytes.Buffer
	written, err := st.Backup(ctx, &buf)
	close(stop)
	wg.Wait()
	if err != nil || written != int64(buf.Len()) || written == 0 {
		t.Fatalf("backup: %d bytes (%d buffered), %v", written, buf.Len(), err)
	}
	r := s.e.Restore(t, st, buf.Bytes())
	s.check(t, r)
	for i := range n {
		e, err := r.GetEnrollment(ctx, fmt.Sprint("e", i))
		if err != nil || e.Attestation.SymmetricKey == nil || e.Attestation.SymmetricKey.PrimaryKey != FullEnrollment("").Attestation.SymmetricKey.PrimaryKey {
			t.Fatalf("restored e%d: %+v %v", i, e, err)
		}
		reg, err := r.GetRegistration(ctx, fmt.Sprint("r", i))
		if err != nil || !bytes.Equal(reg.HubKey, FullRegistration("", "").HubKey) || !bytes.Equal(reg.AttestationHash, FullRegistration("", "").AttestationHash) {
			t.Fatalf("restored r%d: %+v %v", i, reg, err)
		}
	}
	if c, _ := r.CountEnrollments(ctx); c != n {
		t.Fatalf("restored count %d", c)
	}
	// The group index of the copy agrees with its records, whatever the
	// writers had done by then.
	c, err := r.CountGroupRegistrations(ctx, "g")
	if err != nil || c < n || c > n+int(live.Load()) {
		t.Fatalf("restored group count %d (%v), between %d and %d", c, err, n, n+live.Load())
	}
	ids := PageAll(t, 1000, func(q store.Query) (store.Page[*store.Registration], error) {
		return r.ListGroupRegistrations(ctx, "g", q)
	},
		func(r *store.Registration) string { return r.RegistrationID })
	if len(ids) != c {
		t.Fatalf("restored copy lists %d registrations of g and counts %d", len(ids), c)
	}
	if _, err := r.GetGroup(ctx, "G"); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := st.Backup(cctx, &bytes.Buffer{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled backup: %v", err)
	}
}

// close: Close waits for calls in flight and every later call, Close
// included, returns ErrClosed; every write acknowledged before is there
// when the data is opened again.
func (s *suite) close(t *testing.T) {
	ctx := context.Background()
	st := s.open(t, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var acked []string
	running := make(chan struct{}, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				if _, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: id}, nil); err != nil {
					if !errors.Is(err, store.ErrClosed) {
						t.Errorf("record: %v", err)
					}
					return
				}
				mu.Lock()
				acked = append(acked, id)
				mu.Unlock()
				if i == 0 {
					running <- struct{}{}
				}
			}
		})
	}
	for range 8 {
		<-running // every writer has written
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for name, call := range map[string]func() error{
		"GetEnrollment":  func() error { _, err := st.GetEnrollment(ctx, "x"); return err },
		"PutEnrollment":  func() error { _, err := st.PutEnrollment(ctx, FullEnrollment("x"), ""); return err },
		"ListGroups":     func() error { _, err := st.ListGroups(ctx, store.Query{}); return err },
		"CountGroups":    func() error { _, err := st.CountGroups(ctx); return err },
		"GroupsRevision": func() error { _, err := st.GroupsRevision(ctx); return err },
		"ListLinkedHubs": func() error { _, err := st.ListLinkedHubs(ctx); return err },
		"ClaimJobs":      func() error { _, err := st.ClaimJobs(ctx, "o", time.Minute, 1); return err },
		"PutOperation":   func() error { return st.PutOperation(ctx, FullOperation("o", "x", time.Now().Add(time.Hour))) },
		"Sweep":          func() error { _, err := st.Sweep(ctx, time.Now()); return err },
		"Backup":         func() error { _, err := st.Backup(ctx, &bytes.Buffer{}); return err },
		"Close":          st.Close,
	} {
		if err := call(); !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	r := s.e.Reopen(t, st)
	mu.Lock()
	defer mu.Unlock()
	for _, id := range acked {
		if _, err := r.GetRegistration(ctx, id); err != nil {
			t.Fatalf("acknowledged %s: %v", id, err)
		}
	}
	s.check(t, r)
}

// concurrentWriters runs many goroutines that record registrations (some
// moving between groups), write operations and race to replace the same
// enrollments under the etag they all read first: no record is lost or
// doubled, each conditional replace succeeds exactly once, and the losers'
// ErrPreconditionFailed neither fails nor undoes the winners' writes.
func (s *suite) concurrentWriters(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	const (
		workers   = 32
		perWorker = 25
		contested = 200 // enrollments replaced under one etag by 8 workers each
		shared    = 20  // registrations every worker re-records, changing group
	)
	etags := make([]string, contested)
	for j := range etags {
		e, err := st.PutEnrollment(ctx, &store.Enrollment{RegistrationID: fmt.Sprint("enr-", j)}, "")
		if err != nil {
			t.Fatal(err)
		}
		etags[j] = e.ETag
	}
	wins := make([]atomic.Int32, contested)
	winners := make([]atomic.Pointer[store.Enrollment], contested)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := make(chan struct{})
	exp := clock.Now().Add(time.Hour)
	for w := range workers {
		wg.Go(func() {
			<-start
			for i := range perWorker {
				id := fmt.Sprintf("W%02d-%03d", w, i)
				op := &store.Operation{ID: "op-" + id, RegistrationID: id, Status: store.RegistrationAssigned, ExpiresAt: exp}
				got, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: id, Status: store.RegistrationAssigned,
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
				if _, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: sh, EnrollmentGroupID: fmt.Sprint("g", w%4)}, nil); err != nil {
					errs <- err
					return
				}
			}
			// Every enrollment is replaced by 8 workers, in different
			// orders, each under the etag of the first version.
			for k := range contested {
				j := (k + w*13) % contested
				if j%4 != w%4 {
					continue
				}
				e := &store.Enrollment{RegistrationID: fmt.Sprint("ENR-", j), DeviceID: fmt.Sprint("by-", w)}
				got, err := st.PutEnrollment(ctx, e, `"`+etags[j]+`"`)
				switch {
				case err == nil:
					wins[j].Add(1)
					winners[j].Store(got)
				case errors.Is(err, store.ErrPreconditionFailed):
				default:
					errs <- err
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for j := range wins {
		if n := wins[j].Load(); n != 1 {
			t.Fatalf("enr-%d replaced %d times under one etag", j, n)
		}
		e, err := st.GetEnrollment(ctx, fmt.Sprint("enr-", j))
		if err != nil {
			t.Fatal(err)
		}
		if w := winners[j].Load(); e.ETag != w.ETag || e.DeviceID != w.DeviceID || e.ETag == etags[j] {
			t.Fatalf("enr-%d is %s/%s, the winner wrote %s/%s", j, e.DeviceID, e.ETag, w.DeviceID, w.ETag)
		}
	}
	if n, err := st.CountEnrollments(ctx); err != nil || n != contested {
		t.Fatalf("enrollments: %d %v, want %d", n, err, contested)
	}
	for w := range workers {
		for i := range perWorker {
			id := fmt.Sprintf("w%02d-%03d", w, i)
			r, err := st.GetRegistration(ctx, id)
			if err != nil {
				t.Fatalf("lost %s: %v", id, err)
			}
			if string(r.HubKey) != fmt.Sprintf("W%02d-%03d", w, i) {
				t.Fatalf("%s hub key %q", id, r.HubKey)
			}
			if _, err := st.GetOperation(ctx, "op-"+r.RegistrationID); err != nil {
				t.Fatalf("operation of %s: %v", id, err)
			}
		}
	}
	total := 0
	for g := range 4 {
		n, err := st.CountGroupRegistrations(ctx, fmt.Sprint("g", g))
		if err != nil {
			t.Fatal(err)
		}
		p := PageAll(t, 50, func(q store.Query) (store.Page[*store.Registration], error) {
			return st.ListGroupRegistrations(ctx, fmt.Sprint("G", g), q)
		}, func(r *store.Registration) string { return r.RegistrationID })
		if len(p) != n {
			t.Fatalf("g%d: listed %d, counted %d", g, len(p), n)
		}
		total += n
	}
	if want := workers*perWorker + shared; total != want {
		t.Fatalf("registrations in groups: %d, want %d", total, want)
	}
	s.check(t, st)
}
