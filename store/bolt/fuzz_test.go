package bolt

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// FuzzContinuation feeds arbitrary continuation tokens (they arrive in the
// x-ms-continuation header) and page sizes to the listings: each call either
// returns a page within the size limit or ErrBadContinuation, never panics.
func FuzzContinuation(f *testing.F) {
	ctx := context.Background()
	s, err := Open(filepath.Join(f.TempDir(), "fuzz.db"), Options{Timeout: time.Second})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Close() })
	for i := range 5 {
		if _, err := s.PutEnrollment(ctx, &store.Enrollment{RegistrationID: fmt.Sprint("e", i)}, ""); err != nil {
			f.Fatal(err)
		}
		if _, err := s.RecordRegistration(ctx, &store.Registration{RegistrationID: fmt.Sprint("r", i), EnrollmentGroupID: "g"}, nil); err != nil {
			f.Fatal(err)
		}
	}
	p, err := s.ListEnrollments(ctx, store.Query{MaxItems: 2})
	if err != nil {
		f.Fatal(err)
	}
	gp, err := s.ListGroupRegistrations(ctx, "g", store.Query{MaxItems: 2})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(p.Continuation, 2)
	f.Add(gp.Continuation, 1)
	f.Add("", 0)
	f.Add("ZQ", -1)
	f.Add("cmcA", 5000)
	f.Add("!!", 3)
	f.Fuzz(func(t *testing.T, tok string, max int) {
		limit := max
		if limit <= 0 {
			limit = store.DefaultMaxItems
		}
		limit = min(limit, store.MaxMaxItems)
		ep, err := s.ListEnrollments(ctx, store.Query{MaxItems: max, Continuation: tok})
		if err != nil && !errors.Is(err, store.ErrBadContinuation) {
			t.Fatalf("enrollments: %v", err)
		}
		if len(ep.Items) > limit {
			t.Fatalf("enrollments: %d items > %d", len(ep.Items), limit)
		}
		rp, err := s.ListGroupRegistrations(ctx, "g", store.Query{MaxItems: max, Continuation: tok})
		if err != nil && !errors.Is(err, store.ErrBadContinuation) {
			t.Fatalf("group registrations: %v", err)
		}
		for _, r := range rp.Items {
			if r.EnrollmentGroupID != "g" {
				t.Fatalf("registration of another group listed: %+v", r)
			}
		}
	})
}
