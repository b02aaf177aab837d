package etcd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/etcdtest"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/storetest"
)

// testKey is the data key of the tests' stores.
var testKey = bytes.Repeat([]byte{7}, 32)

// TestConformance runs the store conformance suite against the etcd
// engine on a real one-member etcd (embedded), each test on a prefix of
// its own, with Check after every test.
func TestConformance(t *testing.T) {
	m := etcdtest.Start(t)
	var mu sync.Mutex
	opened := map[*Store]Options{}
	var n atomic.Int64
	open := func(t *testing.T, o Options) *Store {
		s := openWith(t, o)
		mu.Lock()
		defer mu.Unlock()
		opened[s] = o
		return s
	}
	optionsOf := func(s store.Store) Options {
		mu.Lock()
		defer mu.Unlock()
		return opened[s.(*Store)]
	}
	storetest.Run(t, storetest.Engine{
		Open: func(t *testing.T, o storetest.Options) store.Store {
			return open(t, Options{Endpoints: []string{m.Endpoint()}, Prefix: fmt.Sprintf("/t%d/", n.Add(1)),
				Key: testKey, Now: o.Now, MaxGroups: o.MaxGroups})
		},
		Reopen: func(t *testing.T, s store.Store) store.Store { return open(t, optionsOf(s)) },
		Restore: func(t *testing.T, s store.Store, backup []byte) store.Store {
			// As docs/operations.md says: check the copy, then restore it
			// into an empty prefix of a cluster with the same secrets.
			if _, _, err := ReadBackup(bytes.NewReader(backup), nil); err != nil {
				t.Fatal(err)
			}
			o := optionsOf(s)
			o.Prefix = fmt.Sprintf("/restored%d/", n.Add(1))
			r := open(t, o)
			if _, err := r.Restore(context.Background(), bytes.NewReader(backup)); err != nil {
				t.Fatal(err)
			}
			return r
		},
		Check: func(t *testing.T, s store.Store) {
			t.Helper()
			if err := s.(*Store).Check(context.Background()); err != nil {
				t.Fatal(err)
			}
		},
	})
}

// openWith opens a store with opts and closes it when t ends.
func openWith(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, store.ErrClosed) {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

// openTest opens a store on a fresh prefix of m.
func openTest(t *testing.T, m *etcdtest.Member, prefix string) *Store {
	t.Helper()
	return openWith(t, Options{Endpoints: []string{m.Endpoint()}, Prefix: prefix, Key: testKey, RequestTimeout: 2 * time.Second})
}
