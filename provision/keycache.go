package provision

import (
	"sync"

	"github.com/tpmdps/dpsd/attest"
)

// tpmKeyCacheSize bounds the devices whose parsed keys are remembered:
// enough for the challenge-to-register gap of every device at thousands of
// provisionings per second; at about 1.5 KiB an entry, a few MiB at most.
const tpmKeyCacheSize = 4096

// tpmKeyCache remembers the EK and SRK a device sent, parsed, so that the
// register that follows its challenge (the same keys again, on another
// connection) does not parse them a second time: strict parsing
// (attest.ParsePublic, go-tpm's reflection-based unmarshal and re-marshal)
// was the largest server CPU cost of a TPM provisioning in profiles (about
// 0.14 ms per key on a 2-core EPYC; BENCHMARKS-load.md). It memoizes a pure
// function: an entry is used only for the same registration id with the same
// base64 text, and attest.Public values are immutable. Safe for concurrent use.
type tpmKeyCache struct {
	mu sync.Mutex
	m  map[string]tpmKeyEntry
}

// tpmKeyEntry is one device's keys, as sent and as parsed.
type tpmKeyEntry struct {
	ekB64, srkB64 string
	ek, srk       *attest.Public
}

// newTPMKeyCache returns an empty cache.
func newTPMKeyCache() *tpmKeyCache {
	return &tpmKeyCache{m: make(map[string]tpmKeyEntry)}
}

// parse returns the parsed EK and SRK of k sent by registrationID, from
// the cache when that device sent exactly these keys before.
func (c *tpmKeyCache) parse(registrationID string, k *TPMKeys) (ek, srk *attest.Public, err error) {
	if c == nil {
		return parseTPMKeys(k)
	}
	c.mu.Lock()
	e, ok := c.m[registrationID]
	c.mu.Unlock()
	if ok && e.ekB64 == k.EndorsementKey && e.srkB64 == k.StorageRootKey {
		return e.ek, e.srk, nil
	}
	if ek, srk, err = parseTPMKeys(k); err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	if len(c.m) >= tpmKeyCacheSize {
		for id := range c.m { // evict an arbitrary entry (map order is random)
			delete(c.m, id)
			break
		}
	}
	c.m[registrationID] = tpmKeyEntry{ekB64: k.EndorsementKey, srkB64: k.StorageRootKey, ek: ek, srk: srk}
	c.mu.Unlock()
	return ek, srk, nil
}
