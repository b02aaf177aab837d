package bolt

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/storetest"
)

// TestConformance runs the store conformance suite against the bbolt
// engine, on real files in t.TempDir(), with Check after every test.
func TestConformance(t *testing.T) {
	var mu sync.Mutex
	opened := map[*Store]Options{} // what each store was opened with
	open := func(t *testing.T, path string, o Options) *Store {
		s := openWith(t, path, o)
		mu.Lock()
		defer mu.Unlock()
		opened[s] = o
		return s
	}
	optionsOf := func(s store.Store) (*Store, Options) {
		mu.Lock()
		defer mu.Unlock()
		b := s.(*Store)
		return b, opened[b]
	}
	storetest.Run(t, storetest.Engine{
		Open: func(t *testing.T, o storetest.Options) store.Store {
			return open(t, filepath.Join(t.TempDir(), "dpsd.db"), Options{Timeout: time.Second, Now: o.Now, MaxGroups: o.MaxGroups})
		},
		Reopen: func(t *testing.T, s store.Store) store.Store {
			b, o := optionsOf(s)
			return open(t, b.Path(), o)
		},
		Restore: func(t *testing.T, s store.Store, backup []byte) store.Store {
			// As docs/operations.md says: the copy in place of the
			// database file, beside the original key file.
			b, o := optionsOf(s)
			path := filepath.Join(t.TempDir(), "restored.db")
			if err := os.WriteFile(path, backup, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := VerifyCopy(path); err != nil {
				t.Fatal(err)
			}
			o.KeyFile = b.KeyFile()
			return open(t, path, o)
		},
		Check: func(t *testing.T, s store.Store) {
			t.Helper()
			if err := s.(*Store).Check(); err != nil {
				t.Fatal(err)
			}
		},
	})
}

// openWith opens path with opts and closes it when t ends.
func openWith(t *testing.T, path string, opts Options) *Store {
	t.Helper()
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, store.ErrClosed) {
			t.Errorf("close %s: %v", path, err)
		}
	})
	return s
}

// TestCheckAfterClose: Check, the engine's own method, also refuses a
// closed store.
func TestCheckAfterClose(t *testing.T) {
	s := openTest(t, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("check after close: %v", err)
	}
}
