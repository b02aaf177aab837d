package bolt

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// TestConcurrentWriters runs many goroutines that record registrations (some
// moving between groups), write operations and race to replace the same
// enrollments under the etag they all read first: no record is lost or
// doubled, each conditional replace succeeds exactly once, and the losers'
// ErrPreconditionFailed (an outcome inside a shared batch) neither fails
// nor undoes the winners' writes.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s := openTest(t, clock)
	const (
		workers   = 32
		perWorker = 25
		contested = 200 // enrollments replaced under one etag by 8 workers each
		shared    = 20  // registrations every worker re-records, changing group
	)
	etags := make([]string, contested)
	for j := range etags {
		e, err := s.PutEnrollment(ctx, &store.Enrollment{RegistrationID: fmt.Sprint("enr-", j)}, "")
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range perWorker {
				id := fmt.Sprintf("W%02d-%03d", w, i)
				op := &store.Operation{ID: "op-" + id, RegistrationID: id, Status: store.RegistrationAssigned, ExpiresAt: exp}
				got, err := s.RecordRegistration(ctx, &store.Registration{RegistrationID: id, Status: store.RegistrationAssigned,
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
				if _, err := s.RecordRegistration(ctx, &store.Registration{RegistrationID: sh, EnrollmentGroupID: fmt.Sprint("g", w%4)}, nil); err != nil {
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
				got, err := s.PutEnrollment(ctx, e, `"`+etags[j]+`"`)
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
		}()
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
		e, err := s.GetEnrollment(ctx, fmt.Sprint("enr-", j))
		if err != nil {
			t.Fatal(err)
		}
		if w := winners[j].Load(); e.ETag != w.ETag || e.DeviceID != w.DeviceID || e.ETag == etags[j] {
			t.Fatalf("enr-%d is %s/%s, the winner wrote %s/%s", j, e.DeviceID, e.ETag, w.DeviceID, w.ETag)
		}
	}
	if n, err := s.CountEnrollments(ctx); err != nil || n != contested {
		t.Fatalf("enrollments: %d %v, want %d", n, err, contested)
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
		p := pageAll(t, 50, func(q store.Query) (store.Page[*store.Registration], error) {
			return s.ListGroupRegistrations(ctx, fmt.Sprint("G", g), q)
		},
			func(r *store.Registration) string { return r.RegistrationID })
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
