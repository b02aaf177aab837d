package bolt

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// TestGroupsRevision: every successful group write, and only those, moves
// the revision; it survives a reopen.
func TestGroupsRevision(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "dpsd.db")
	s := openAt(t, path, nil)
	rev := func() uint64 {
		t.Helper()
		r, err := s.GroupsRevision(ctx)
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
	step("create", true, func() error { g, err := s.PutGroup(ctx, fullGroup("g1"), ""); etag = g.ETag; return err })
	step("update", true, func() error { _, err := s.PutGroup(ctx, fullGroup("G1"), etag); return err })
	step("stale update", false, func() error { _, err := s.PutGroup(ctx, fullGroup("g1"), etag); return err })
	step("enrollment write", false, func() error { _, err := s.PutEnrollment(ctx, fullEnrollment("e1"), ""); return err })
	step("registration write", false, func() error { _, err := s.RecordRegistration(ctx, fullRegistration("r1", "g1"), nil); return err })
	step("delete missing", false, func() error { return s.DeleteGroup(ctx, "nope", "") })
	step("delete", true, func() error { return s.DeleteGroup(ctx, "g1", "") })
	if rev() <= r0 {
		t.Fatal("revision did not grow")
	}
	last := rev()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GroupsRevision(ctx); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("closed store: %v", err)
	}
	s = openAt(t, path, nil)
	if got := rev(); got != last {
		t.Fatalf("revision after reopen %d, want %d", got, last)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestGroupLimit: with MaxGroups, creating a group beyond the limit is
// refused (a *LimitError wrapping ErrLimit) and writes nothing, while
// updates of existing groups go on; concurrent creates never overshoot.
func TestGroupLimit(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "dpsd.db"), Options{Timeout: time.Second, MaxGroups: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	// 30 creates at once: exactly 10 succeed.
	var wg sync.WaitGroup
	errs := make([]error, 30)
	for i := range errs {
		wg.Go(func() { _, errs[i] = s.PutGroup(ctx, fullGroup(fmt.Sprintf("g%02d", i)), "") })
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
	if n, _ := s.CountGroups(ctx); ok != 10 || limited != 20 || n != 10 {
		t.Fatalf("%d created, %d refused, %d stored; want 10, 20, 10", ok, limited, n)
	}
	rev, _ := s.GroupsRevision(ctx)
	if _, err := s.PutGroup(ctx, fullGroup("one-too-many"), ""); !errors.Is(err, store.ErrLimit) {
		t.Fatalf("11th group: %v", err)
	}
	if _, err := s.GetGroup(ctx, "one-too-many"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused group was stored: %v", err)
	}
	if r, _ := s.GroupsRevision(ctx); r != rev {
		t.Fatal("a refused create moved the revision")
	}
	// An etag for a missing group is a failed precondition first.
	if _, err := s.PutGroup(ctx, fullGroup("one-too-many"), `"abc"`); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("conditional create at the limit: %v", err)
	}
	// Updating an existing group at the limit works.
	p, err := s.ListGroups(ctx, store.Query{})
	if err != nil || len(p.Items) != 10 {
		t.Fatalf("list: %v", err)
	}
	if _, err := s.PutGroup(ctx, fullGroup(p.Items[0].EnrollmentGroupID), p.Items[0].ETag); err != nil {
		t.Fatalf("update at the limit: %v", err)
	}
	// One deleted, one more can be created.
	if err := s.DeleteGroup(ctx, p.Items[1].EnrollmentGroupID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutGroup(ctx, fullGroup("after-delete"), ""); err != nil {
		t.Fatalf("create after a delete: %v", err)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}
