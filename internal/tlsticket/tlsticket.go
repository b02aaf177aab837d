// Package tlsticket keys TLS session tickets from a secret the nodes of a
// cluster share, so that a ticket one node issued resumes TLS on any other
// (a TPM device's second connection, after its challenge, lands wherever
// the load balancer sends it). Keys rotate daily: the key of day d is
// HMAC-SHA256(secret, label || d), d the number of UTC days since the Unix
// epoch. A node encrypts new tickets with today's key and accepts
// yesterday's and tomorrow's too, so a ticket lives at most a day or two
// and clocks a little apart at midnight do not matter. Go's TLS stack
// keeps a session's lifetime below 7 days in any case.
package tlsticket

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"sync"
	"time"
)

// label domain-separates ticket keys from any other use of the secret.
const label = "dpsd tls session ticket key v1"

// Day is the rotation period.
const Day = 24 * time.Hour

// MinSecretSize is the smallest accepted secret.
const MinSecretSize = 32

// Keys sets and rotates the session ticket keys of TLS configurations.
type Keys struct {
	secret []byte
	now    func() time.Time

	mu      sync.Mutex
	configs []*tls.Config
}

// New returns the ticket keys of secret (at least MinSecretSize bytes) on
// the clock now (nil: time.Now).
func New(secret []byte, now func() time.Time) (*Keys, error) {
	if len(secret) < MinSecretSize {
		return nil, errors.New("tlsticket: secret shorter than 32 bytes")
	}
	if now == nil {
		now = time.Now
	}
	return &Keys{secret: append([]byte(nil), secret...), now: now}, nil
}

// key is the ticket key of day d.
func (k *Keys) key(d int64) [32]byte {
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte(label))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(d))
	m.Write(b[:])
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}

// At returns the keys in force at t: the day's key first (it encrypts new
// tickets), then the previous and the next day's (they still decrypt).
func (k *Keys) At(t time.Time) [][32]byte {
	d := t.UTC().Unix() / int64(Day/time.Second)
	return [][32]byte{k.key(d), k.key(d - 1), k.key(d + 1)}
}

// Apply sets the keys in force now on c and keeps c to rotate it (Run).
// Call it on every tls.Config that accepts connections, clones included:
// a clone does not follow its original's keys.
func (k *Keys) Apply(c *tls.Config) {
	c.SetSessionTicketKeys(k.At(k.now()))
	k.mu.Lock()
	k.configs = append(k.configs, c)
	k.mu.Unlock()
}

// Run sets the next day's keys on every applied configuration at each UTC
// midnight, until ctx ends.
func (k *Keys) Run(ctx context.Context) {
	for {
		now := k.now()
		next := now.UTC().Truncate(Day).Add(Day)
		t := time.NewTimer(next.Sub(now) + time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		keys := k.At(k.now())
		k.mu.Lock()
		for _, c := range k.configs {
			c.SetSessionTicketKeys(keys)
		}
		k.mu.Unlock()
	}
}
