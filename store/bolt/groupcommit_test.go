package bolt

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/internal/testkit"
)

// TestGroupCommit runs many concurrent writes through one groupCommit, some
// failing and one panicking: every write gets its own outcome, the failing
// ones leave nothing behind and the others are all committed.
func TestGroupCommit(t *testing.T) {
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "g.db"), 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
		t.Fatal(err)
	}
	var g groupCommit
	errBad := errors.New("bad write")
	const n = 200
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = g.do(db, func(tx *bbolt.Tx) error {
				if err := tx.Bucket([]byte("b")).Put([]byte(fmt.Sprint(i)), []byte("v")); err != nil {
					return err
				}
				switch {
				case i%17 == 3:
					return errBad // after writing: the batch must roll it back
				case i == 101:
					panic("boom")
				}
				return nil
			})
		}()
	}
	wg.Wait()
	err = db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("b"))
		for i := range n {
			got := b.Get([]byte(fmt.Sprint(i))) != nil
			switch {
			case i%17 == 3:
				if !errors.Is(errs[i], errBad) || got {
					t.Errorf("write %d: err %v, stored %v; want errBad and nothing stored", i, errs[i], got)
				}
			case i == 101:
				if errs[i] == nil || got {
					t.Errorf("panicking write: err %v, stored %v", errs[i], got)
				}
			default:
				if errs[i] != nil || !got {
					t.Errorf("write %d: err %v, stored %v; want committed", i, errs[i], got)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The leader goroutine exits once it finds the queue empty.
	testkit.Await(t, "no group commit leader and no queued write", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return !g.leading && len(g.queue) == 0
	})
}
