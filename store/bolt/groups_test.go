package bolt

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/tpmdps/dpsd/store/storetest"
)

// TestGroupsRevisionSurvivesReopen: the revision is meta/groupsrev in the
// file, so a reopen reads exactly the last value (the suite checks only
// that it does not go back).
func TestGroupsRevisionSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "dpsd.db")
	s := openAt(t, path, nil)
	for _, id := range []string{"g1", "g2", "g3"} {
		if _, err := s.PutGroup(ctx, storetest.FullGroup(id), ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteGroup(ctx, "g2", ""); err != nil {
		t.Fatal(err)
	}
	last, err := s.GroupsRevision(ctx)
	if err != nil || last != 4 {
		t.Fatalf("revision after 4 group writes of a new file: %d %v", last, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path, nil)
	if got, err := s.GroupsRevision(ctx); err != nil || got != last {
		t.Fatalf("revision after reopen %d (%v), want %d", got, err, last)
	}
}
