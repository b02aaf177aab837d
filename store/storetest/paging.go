package storetest

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/tpmdps/dpsd/store"
)

// PageAll walks a listing page by page with MaxItems max and returns every
// id seen, failing t on a page larger than allowed, an empty page with a
// continuation, or a listing that does not end.
func PageAll[T any](t testing.TB, max int, list func(store.Query) (store.Page[T], error), id func(T) string) []string {
	t.Helper()
	var ids []string
	q := store.Query{MaxItems: max}
	for pages := 0; ; pages++ {
		if pages > 100000 {
			t.Fatal("listing does not end")
		}
		p, err := list(q)
		if err != nil {
			t.Fatal(err)
		}
		if limit := pageLimit(max); len(p.Items) > limit {
			t.Fatalf("page of %d items, max %d", len(p.Items), limit)
		}
		for _, it := range p.Items {
			ids = append(ids, id(it))
		}
		if p.Continuation == "" {
			return ids
		}
		if len(p.Items) == 0 {
			t.Fatal("empty page with a continuation")
		}
		q.Continuation = p.Continuation
	}
}

// pageLimit is the page size a store must apply to MaxItems max.
func pageLimit(max int) int {
	if max <= 0 {
		return store.DefaultMaxItems
	}
	return min(max, store.MaxMaxItems)
}

// checkExactlyOnce fails t unless got holds every id of want once and nothing else.
func checkExactlyOnce(t *testing.T, what string, got []string, want map[string]bool) {
	t.Helper()
	seen := map[string]bool{}
	for _, id := range got {
		if seen[id] {
			t.Fatalf("%s: %s listed twice", what, id)
		}
		if !want[id] {
			t.Fatalf("%s: unexpected %s", what, id)
		}
		seen[id] = true
	}
	if len(seen) != len(want) {
		t.Fatalf("%s: saw %d of %d", what, len(seen), len(want))
	}
}

// paging: every listing returns each record once across pages of any size
// (the default and the cap applied), in key order, a group's registrations
// and no other group's (also one whose id extends it), and the counts agree.
func (s *suite) paging(t *testing.T) {
	ctx := context.Background()
	st := s.open(t, nil)
	const n = 1201 // more than MaxMaxItems
	const groups = 240
	wantE, wantG, wantR := map[string]bool{}, map[string]bool{}, map[string]bool{}
	var mu sync.Mutex
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				id := fmt.Sprintf("Dev-%05d", i*7919%n)
				if _, err := st.PutEnrollment(ctx, &store.Enrollment{RegistrationID: id, EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: "ek"}}}}, ""); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				wantE[id] = true
				mu.Unlock()
				if i >= groups {
					continue
				}
				gid := fmt.Sprintf("grp-%04d", i)
				if _, err := st.PutGroup(ctx, &store.Group{EnrollmentGroupID: gid}, ""); err != nil {
					errs <- err
					return
				}
				// Registrations of "big" and of "big0", which shares its prefix.
				rid := fmt.Sprintf("r-%05d", i)
				grp := "big"
				if i%5 == 0 {
					grp = "big0"
				}
				if _, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: rid, Status: store.RegistrationAssigned, EnrollmentGroupID: grp}, nil); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				wantG[gid] = true
				if grp == "big" {
					wantR[rid] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, max := range []int{0, 1, 7, 1000, 5000} {
		ids := PageAll(t, max, func(q store.Query) (store.Page[*store.Enrollment], error) { return st.ListEnrollments(ctx, q) },
			func(e *store.Enrollment) string { return e.RegistrationID })
		checkExactlyOnce(t, fmt.Sprintf("enrollments max=%d", max), ids, wantE)
		for i := 1; i < len(ids); i++ {
			if ids[i-1] >= ids[i] {
				t.Fatalf("enrollments max=%d: %s listed before %s", max, ids[i-1], ids[i])
			}
		}
	}
	// A page is full up to the cap: MaxItems 0 is the default, 5000 the cap.
	for max, want := range map[int]int{0: store.DefaultMaxItems, 5000: store.MaxMaxItems, 3: 3} {
		p, err := st.ListEnrollments(ctx, store.Query{MaxItems: max})
		if err != nil || len(p.Items) != want || p.Continuation == "" {
			t.Fatalf("first page with MaxItems %d: %d items, %q, %v; want %d and a continuation", max, len(p.Items), p.Continuation, err, want)
		}
	}
	gids := PageAll(t, 13, func(q store.Query) (store.Page[*store.Group], error) { return st.ListGroups(ctx, q) },
		func(g *store.Group) string { return g.EnrollmentGroupID })
	checkExactlyOnce(t, "groups", gids, wantG)
	rids := PageAll(t, 17, func(q store.Query) (store.Page[*store.Registration], error) {
		return st.ListGroupRegistrations(ctx, "BIG", q)
	}, func(r *store.Registration) string { return r.RegistrationID })
	checkExactlyOnce(t, "group registrations", rids, wantR)
	if c, _ := st.CountEnrollments(ctx); c != n {
		t.Fatalf("enrollment count %d", c)
	}
	if c, _ := st.CountGroups(ctx); c != len(wantG) {
		t.Fatalf("group count %d", c)
	}
	if c, _ := st.CountGroupRegistrations(ctx, "big"); c != len(wantR) {
		t.Fatalf("big count %d want %d", c, len(wantR))
	}
	if c, _ := st.CountGroupRegistrations(ctx, "big0"); c != groups-len(wantR) {
		t.Fatalf("big0 count %d", c)
	}
	if c, err := st.CountGroupRegistrations(ctx, "none"); err != nil || c != 0 {
		t.Fatalf("count of an unknown group: %d %v", c, err)
	}
	// The last page exactly filled: no dangling continuation.
	p, err := st.ListGroups(ctx, store.Query{MaxItems: groups / 2})
	if err != nil || p.Continuation == "" {
		t.Fatal(err)
	}
	p, err = st.ListGroups(ctx, store.Query{MaxItems: groups / 2, Continuation: p.Continuation})
	if err != nil || len(p.Items) != groups/2 || p.Continuation != "" {
		t.Fatalf("last page: %d items, %q, %v", len(p.Items), p.Continuation, err)
	}
	s.check(t, st)
}

// pagingUnderWrites: writes between pages (creates before and after the
// listing's position, deletes of those, updates of records already listed
// and of records still ahead) do not disturb paging: every record that
// exists throughout is seen exactly once.
func (s *suite) pagingUnderWrites(t *testing.T) {
	ctx := context.Background()
	st := s.open(t, nil)
	const n = 300
	stable := map[string]bool{}
	stableR := map[string]bool{}
	for i := range n {
		id := fmt.Sprintf("m-%04d", i)
		if _, err := st.PutEnrollment(ctx, &store.Enrollment{RegistrationID: id}, ""); err != nil {
			t.Fatal(err)
		}
		stable[id] = true
		if i%3 == 0 {
			if _, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: id, EnrollmentGroupID: "g"}, nil); err != nil {
				t.Fatal(err)
			}
			stableR[id] = true
		}
	}
	page := 0
	var transient []string
	// between runs after every page: it creates a record before and one
	// after every stable one near the position, deletes the transient
	// records of two pages ago, and rewrites two stable records.
	between := func() {
		page++
		for _, id := range []string{fmt.Sprintf("a-%04d", page), fmt.Sprintf("m-%04d-x", page*7%n), fmt.Sprintf("z-%04d", page)} {
			if _, err := st.PutEnrollment(ctx, &store.Enrollment{RegistrationID: id}, ""); err != nil {
				t.Fatal(err)
			}
			if _, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: id, EnrollmentGroupID: "G"}, nil); err != nil {
				t.Fatal(err)
			}
			transient = append(transient, id)
		}
		if len(transient) > 6 {
			for _, id := range transient[:3] {
				if err := st.DeleteEnrollment(ctx, id, ""); err != nil {
					t.Fatal(err)
				}
				if err := st.DeleteRegistration(ctx, id, ""); err != nil {
					t.Fatal(err)
				}
			}
			transient = transient[3:]
		}
		for _, i := range []int{page * 7 % n, (page*7 + n/2) % n} {
			id := fmt.Sprintf("m-%04d", i)
			if _, err := st.PutEnrollment(ctx, &store.Enrollment{RegistrationID: id, DeviceID: fmt.Sprint("v", page)}, ""); err != nil {
				t.Fatal(err)
			}
			if stableR[id] {
				if _, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: id, EnrollmentGroupID: "g", Status: fmt.Sprint("v", page)}, nil); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	listed := func(ids []string, want map[string]bool, what string) {
		t.Helper()
		seen := map[string]int{}
		for _, id := range ids {
			seen[id]++
			if seen[id] > 1 {
				t.Fatalf("%s: %s listed twice", what, id)
			}
		}
		for id := range want {
			if seen[id] != 1 {
				t.Fatalf("%s: %s, present throughout, listed %d times", what, id, seen[id])
			}
		}
	}
	ids := PageAll(t, 7, func(q store.Query) (store.Page[*store.Enrollment], error) {
		if q.Continuation != "" {
			between()
		}
		return st.ListEnrollments(ctx, q)
	}, func(e *store.Enrollment) string { return e.RegistrationID })
	listed(ids, stable, "enrollments")
	if page < n/7 {
		t.Fatalf("only %d pages", page)
	}
	page = 0
	rids := PageAll(t, 5, func(q store.Query) (store.Page[*store.Registration], error) {
		if q.Continuation != "" {
			between()
		}
		return st.ListGroupRegistrations(ctx, "g", q)
	}, func(r *store.Registration) string { return r.RegistrationID })
	listed(rids, stableR, "group registrations")
	s.check(t, st)
}

// badContinuation: tokens of another listing, another group, or garbage
// are ErrBadContinuation; a group's token works under any case of its id.
func (s *suite) badContinuation(t *testing.T) {
	ctx := context.Background()
	st := s.open(t, nil)
	for i := range 3 {
		if _, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: fmt.Sprint("r", i), EnrollmentGroupID: "g"}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: fmt.Sprint("o", i), EnrollmentGroupID: "other"}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := st.PutEnrollment(ctx, &store.Enrollment{RegistrationID: fmt.Sprint("e", i)}, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := st.PutGroup(ctx, &store.Group{EnrollmentGroupID: fmt.Sprint("g", i)}, ""); err != nil {
			t.Fatal(err)
		}
	}
	p, err := st.ListEnrollments(ctx, store.Query{MaxItems: 1})
	if err != nil || p.Continuation == "" {
		t.Fatal(err)
	}
	gp, err := st.ListGroupRegistrations(ctx, "g", store.Query{MaxItems: 1})
	if err != nil || gp.Continuation == "" {
		t.Fatal(err)
	}
	grp, err := st.ListGroups(ctx, store.Query{MaxItems: 1})
	if err != nil || grp.Continuation == "" {
		t.Fatal(err)
	}
	bad := []string{"!!!", "%%", base64.RawURLEncoding.EncodeToString([]byte("x")), p.Continuation + "=", gp.Continuation, grp.Continuation}
	for _, tok := range bad {
		if _, err := st.ListEnrollments(ctx, store.Query{Continuation: tok}); !errors.Is(err, store.ErrBadContinuation) {
			t.Errorf("enrollments with %q: %v", tok, err)
		}
	}
	if _, err := st.ListGroups(ctx, store.Query{Continuation: p.Continuation}); !errors.Is(err, store.ErrBadContinuation) {
		t.Errorf("enrollment token accepted by groups: %v", err)
	}
	if _, err := st.ListGroupRegistrations(ctx, "other", store.Query{Continuation: gp.Continuation}); !errors.Is(err, store.ErrBadContinuation) {
		t.Errorf("token of group g accepted for group other: %v", err)
	}
	if _, err := st.ListGroupRegistrations(ctx, "g", store.Query{Continuation: p.Continuation}); !errors.Is(err, store.ErrBadContinuation) {
		t.Errorf("enrollment token accepted by group registrations: %v", err)
	}
	if _, err := st.ListGroupRegistrations(ctx, "G", store.Query{Continuation: gp.Continuation}); err != nil {
		t.Errorf("token of group g refused for G: %v", err)
	}
}
