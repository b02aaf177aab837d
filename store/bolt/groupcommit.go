package bolt

import (
	"fmt"
	"sync"

	bbolt "go.etcd.io/bbolt"
)

// groupCommit coalesces concurrent write transactions into one bbolt
// transaction and one fsync (group commit): while one batch commits, the
// writes that arrive queue up, and the next batch takes all of them at
// once. So a batch grows with the commit time, where db.Batch's grows only
// with MaxBatchDelay: under load, db.Batch queued many small batches behind
// the single writer lock, one fsync each (with 1,000 devices provisioning at
// once, reconnect and register waited 1.5 s each; BENCHMARKS-load.md).
// There is no timer: a batch starts as soon as the previous one ends.
type groupCommit struct {
	mu      sync.Mutex
	queue   []*groupCall
	leading bool // a caller is committing a batch
}

// groupCall is one write waiting for its batch. wake receives false when
// the call's outcome is in err, or true when the call must lead the next
// batch.
type groupCall struct {
	fn   func(*bbolt.Tx) error
	err  error
	wake chan bool
}

// do runs fn in a durable write transaction shared with the writes queued
// at the same time and returns its own outcome. The caller that finds no
// batch committing commits one itself (no goroutine is started and no
// other goroutine woken for a lone writer); when it is done and writes have
// queued meanwhile, the first of them is woken to commit the next batch.
// As with db.Batch, fn may run more than once: when one function of a batch
// fails, the transaction is rolled back, the failing function is run again
// alone (its error is its own) and the others are retried without it.
func (g *groupCommit) do(db *bbolt.DB, fn func(*bbolt.Tx) error) error {
	c := &groupCall{fn: fn, wake: make(chan bool, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, c)
	lead := !g.leading
	g.leading = true
	g.mu.Unlock()
	if !lead && !<-c.wake {
		return c.err
	}
	g.mu.Lock()
	calls := g.queue
	g.queue = nil
	g.mu.Unlock()
	commitCalls(db, calls)
	g.mu.Lock()
	if len(g.queue) == 0 {
		g.leading = false
	} else {
		g.queue[0].wake <- true
	}
	g.mu.Unlock()
	return c.err
}

// commitCalls runs calls in one transaction and delivers each outcome.
func commitCalls(db *bbolt.DB, calls []*groupCall) {
	for len(calls) > 0 {
		failed := -1
		err := db.Update(func(tx *bbolt.Tx) error {
			for i, c := range calls {
				if err := safeCall(c.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			c := calls[failed]
			c.err = db.Update(func(tx *bbolt.Tx) error { return safeCall(c.fn, tx) })
			c.wake <- false
			rest := make([]*groupCall, 0, len(calls)-1)
			rest = append(rest, calls[:failed]...)
			calls = append(rest, calls[failed+1:]...)
			continue
		}
		for _, c := range calls {
			c.err = err // nil, or the commit's failure, shared by all
			c.wake <- false
		}
		return
	}
}

// safeCall runs fn, turning a panic into an error so that one bad write
// cannot take the committing goroutine (and every waiter) down.
func safeCall(fn func(*bbolt.Tx) error, tx *bbolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("store: panic in write transaction: %v", p)
		}
	}()
	return fn(tx)
}
