package ratelimit

import (
	"sync"
	"time"
)

// Gate lets at most one event per key through per interval (to log a
// refusal once a minute per address, say) and counts the events it held
// back in between. It remembers at most maxKeys keys: when it is full, keys
// whose interval has passed are forgotten, and while none has, events of
// keys it does not know are held back without being counted. Memory stays
// bounded however many keys an attacker uses. Safe for concurrent use.
type Gate struct {
	interval time.Duration
	maxKeys  int
	now      func() time.Time

	mu        sync.Mutex
	keys      map[string]*gateKey
	nextPrune time.Time // no key can have expired before then
}

type gateKey struct {
	last time.Time // when an event last passed
	held int       // events held back since
}

// NewGate returns a Gate passing one event per key per interval, for at most
// maxKeys keys (maxKeys < 1 is treated as 1). now is the clock (nil: time.Now).
func NewGate(interval time.Duration, maxKeys int, now func() time.Time) *Gate {
	if now == nil {
		now = time.Now
	}
	return &Gate{interval: interval, maxKeys: max(maxKeys, 1), now: now, keys: make(map[string]*gateKey)}
}

// Pass reports whether an event of key may pass now and, when it may, how
// many of key's events were held back since the last one passed.
func (g *Gate) Pass(key string) (ok bool, held int) {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if k, found := g.keys[key]; found {
		if now.Sub(k.last) < g.interval {
			k.held++
			return false, 0
		}
		held, k.last, k.held = k.held, now, 0
		return true, held
	}
	if len(g.keys) >= g.maxKeys {
		g.pruneLocked(now)
		if len(g.keys) >= g.maxKeys {
			return false, 0
		}
	}
	g.keys[key] = &gateKey{last: now}
	return true, 0
}

// pruneLocked forgets the keys whose interval has passed (an event of theirs
// would pass anyway). It scans only when some key can have expired.
func (g *Gate) pruneLocked(now time.Time) {
	if now.Before(g.nextPrune) {
		return
	}
	oldest := now
	for k, v := range g.keys {
		if now.Sub(v.last) >= g.interval {
			delete(g.keys, k)
		} else if v.last.Before(oldest) {
			oldest = v.last
		}
	}
	g.nextPrune = oldest.Add(g.interval)
}

// Len reports how many keys are remembered.
func (g *Gate) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.keys)
}
