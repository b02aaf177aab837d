// Package gate admits the calls of a store engine until it is closed, and
// lets Close wait for the calls it admitted: the lifecycle both engines
// share, so that no call touches a closed file or client.
package gate

import (
	"sync"

	"github.com/tpmdps/dpsd/store"
)

// Gate is open when zero. It is safe for concurrent use.
type Gate struct {
	mu       sync.RWMutex // guards closed against inflight.Add
	closed   bool
	inflight sync.WaitGroup
}

// Enter admits one call, which must end with Leave; after Close it returns
// store.ErrClosed.
func (g *Gate) Enter() error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return store.ErrClosed
	}
	g.inflight.Add(1)
	return nil
}

// Leave ends a call that Enter admitted.
func (g *Gate) Leave() { g.inflight.Done() }

// Close refuses new calls and waits for the admitted ones to end. It
// returns store.ErrClosed when the gate was already closed, so that an
// engine's Close runs its own shutdown once.
func (g *Gate) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return store.ErrClosed
	}
	g.closed = true
	g.mu.Unlock()
	g.inflight.Wait()
	return nil
}
