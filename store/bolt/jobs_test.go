package bolt

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/storetest"
)

// TestReopenEndsLeases: bbolt admits one process per file, so the leases
// a process held when it stopped (a crash) are held by nobody alive: the
// next Open ends them, and the jobs are due again at once, without
// waiting for the leases to expire.
func TestReopenEndsLeases(t *testing.T) {
	ctx := context.Background()
	clock := storetest.NewClock()
	path := filepath.Join(t.TempDir(), "dpsd.db")
	s := openAt(t, path, clock)
	exp := clock.Now().Add(time.Hour)
	for i := range 3 {
		id := fmt.Sprint("op-", i)
		op := &store.Operation{ID: id, RegistrationID: "r", Status: store.RegistrationAssigning, ExpiresAt: exp}
		if err := s.EnqueueJob(ctx, op, storetest.NewJob(id, "r", clock.Now()), 0); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ClaimJobs(ctx, "crashed-run", time.Hour, 2)
	if err != nil || len(got) != 2 {
		t.Fatalf("claim: %d %v", len(got), err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path, clock) // the clock has not moved: the leases have not expired
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	again, err := s.ClaimJobs(ctx, "next-run", time.Hour, 10)
	if err != nil || len(again) != 3 {
		t.Fatalf("after reopen %d jobs claimable, want 3 (%v)", len(again), err)
	}
	for _, j := range again {
		if j.Owner != "next-run" || len(j.Secret) == 0 {
			t.Fatalf("reclaimed job: %+v", j)
		}
	}
}

// TestSchemaUpgradeFromVersion3: a version 3 file has no linked hub or job
// buckets; opening it creates them, keeps every record, and the new
// records can then be written.
func TestSchemaUpgradeFromVersion3(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v3.db")
	s := openAt(t, path, nil)
	if _, err := s.PutEnrollment(ctx, storetest.FullEnrollment("e1"), ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	downgrade(t, path, 3, bktLinkedHubs, bktJobs, bktJobDue)
	s = openAt(t, path, nil)
	if err := s.Check(); err != nil {
		t.Fatalf("after upgrade: %v", err)
	}
	if _, err := s.GetEnrollment(ctx, "e1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutLinkedHub(ctx, storetest.FullLinkedHub("h.example.net"), ""); err != nil {
		t.Fatal(err)
	}
	op := &store.Operation{ID: "op", RegistrationID: "r", Status: store.RegistrationAssigning, ExpiresAt: time.Now().Add(time.Hour)}
	if err := s.EnqueueJob(ctx, op, storetest.NewJob("op", "r", time.Now()), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}
