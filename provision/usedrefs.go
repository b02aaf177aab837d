package provision

import (
	"errors"
	"sync"
	"time"
)

// DefaultMaxUsedChallenges is Config.MaxUsedChallenges when zero: about
// 60 MB of memory at most, and room for 1,700 TPM authentications per
// second sustained over the default 10-minute challenge lifetime.
const DefaultMaxUsedChallenges = 1 << 20

var (
	// errChallengeUsed: the reference has already authenticated once in this run.
	errChallengeUsed = errors.New("challenge already used")
	// errTooManyUsedChallenges: the memory of used references is full of
	// unexpired entries; the device should try again later.
	errTooManyUsedChallenges = errors.New("too many unexpired used challenges")
)

// usedRefs remembers the nonces of the challenge references that have
// authenticated in this run, each until its reference expires, so that a
// reference authenticates at most once. It is memory only: references carry
// the run id, and one from another run is refused before it gets here, so
// nothing needs to survive a restart and no durable write delays the
// device's reconnect.
//
// Entries are also kept in arrival order. The challenge lifetime is one
// setting, so expiries arrive almost in order and the expired ones are
// dropped from the front as new ones come in (amortised constant time, no
// sweep over the whole set).
type usedRefs struct {
	mu    sync.Mutex
	set   map[[challengeNonceSize]byte]struct{}
	order []usedRef // arrival order; order[head:] are live
	head  int
	max   int
}

// usedRef is one remembered reference.
type usedRef struct {
	nonce   [challengeNonceSize]byte
	expires int64 // Unix seconds
}

func newUsedRefs(max int) *usedRefs {
	return &usedRefs{set: make(map[[challengeNonceSize]byte]struct{}), max: max}
}

// use records that ref authenticates now. It returns errChallengeUsed if it
// already did, and errTooManyUsedChallenges when max unexpired references
// are remembered (refusing is the safe side: forgetting one early would let
// it authenticate twice).
func (u *usedRefs) use(ref challengeRef, now time.Time) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.dropExpired(now.Unix())
	if _, ok := u.set[ref.nonce]; ok {
		return errChallengeUsed
	}
	if len(u.set) >= u.max {
		return errTooManyUsedChallenges
	}
	u.set[ref.nonce] = struct{}{}
	u.order = append(u.order, usedRef{nonce: ref.nonce, expires: ref.expires.Unix()})
	return nil
}

// dropExpired forgets the references at the front of the arrival order whose
// expiry has passed (an expired reference is refused before use is called).
func (u *usedRefs) dropExpired(now int64) {
	for u.head < len(u.order) && u.order[u.head].expires <= now {
		delete(u.set, u.order[u.head].nonce)
		u.order[u.head] = usedRef{}
		u.head++
	}
	// Compact once the dead front is at least half of the slice, so the
	// slice does not grow without bound and copying stays amortised O(1).
	if u.head > 0 && u.head*2 >= len(u.order) {
		n := copy(u.order, u.order[u.head:])
		clear(u.order[n:])
		u.order = u.order[:n]
		u.head = 0
	}
}
