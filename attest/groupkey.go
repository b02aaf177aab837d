package attest

import (
	"crypto/sha256"
	"encoding"
	"errors"
	"fmt"
	"hash"
)

// GroupKey is an enrollment group's symmetric key made ready for deriving
// device keys (DeriveDeviceKey) many times: the HMAC-SHA256 key schedule,
// the SHA-256 states after the inner and outer padded key blocks, is
// computed once, so that a derivation hashes only the registration id and
// the inner digest (two or three SHA-256 blocks instead of four or five).
// The broker tries every symmetric-key group for a device without an
// individual enrollment, so this is the per-group cost of such a CONNECT.
// Immutable and safe for concurrent use; it holds key-derived state: treat
// it as the key.
type GroupKey struct {
	inner, outer []byte // marshaled SHA-256 states after (K xor ipad) and (K xor opad)
}

// NewGroupKey prepares key (as DecodeSymmetricKey returns it: 16-64
// bytes) for DeviceKeyDeriver.
func NewGroupKey(key []byte) (*GroupKey, error) {
	if len(key) < MinSymmetricKeyLen || len(key) > MaxSymmetricKeyLen {
		return nil, fmt.Errorf("%w: %d bytes, want %d-%d", ErrInvalidSymmetricKey, len(key), MinSymmetricKeyLen, MaxSymmetricKeyLen)
	}
	var pad [sasMACBlock]byte // a key of at most one block is used as it is (RFC 2104)
	state := func(xor byte) ([]byte, error) {
		for i := range pad {
			var k byte
			if i < len(key) {
				k = key[i]
			}
			pad[i] = k ^ xor
		}
		h := sha256.New()
		h.Write(pad[:])
		m, ok := h.(encoding.BinaryMarshaler)
		if !ok {
			return nil, errors.New("attest: SHA-256 state cannot be saved")
		}
		return m.MarshalBinary()
	}
	defer clear(pad[:])
	inner, err := state(0x36)
	if err != nil {
		return nil, err
	}
	outer, err := state(0x5c)
	if err != nil {
		return nil, err
	}
	return &GroupKey{inner: inner, outer: outer}, nil
}

// DeviceKeyDeriver derives one registration id's device keys from
// GroupKeys with one reused SHA-256 state, so that trying many groups
// allocates nothing per group. Not safe for concurrent use: one per
// CONNECT.
type DeviceKeyDeriver struct {
	h         hash.Hash
	un        encoding.BinaryUnmarshaler
	id        []byte
	inner, dk [sha256.Size]byte
}

// NewDeviceKeyDeriver returns a deriver for registrationID, exactly as the
// device spells it (see DeriveDeviceKey).
func NewDeviceKeyDeriver(registrationID string) *DeviceKeyDeriver {
	h := sha256.New()
	un, _ := h.(encoding.BinaryUnmarshaler) // every standard library hash is one
	return &DeviceKeyDeriver{h: h, un: un, id: []byte(registrationID)}
}

// Derive returns DeriveDeviceKey(key, registrationID) for g's key. The
// result is a secret: clear it when done.
func (d *DeviceKeyDeriver) Derive(g *GroupKey) [sha256.Size]byte {
	if d.un == nil || g == nil {
		panic("attest: DeviceKeyDeriver or GroupKey not made by its constructor")
	}
	// The states were marshaled by this package's NewGroupKey from the same
	// hash, so loading them cannot fail.
	_ = d.un.UnmarshalBinary(g.inner)
	d.h.Write(d.id)
	d.h.Sum(d.inner[:0])
	_ = d.un.UnmarshalBinary(g.outer)
	d.h.Write(d.inner[:])
	d.h.Sum(d.dk[:0])
	out := d.dk
	clear(d.dk[:])
	return out
}
