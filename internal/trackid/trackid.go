// Package trackid makes the tracking ids that tie an answer (a DPS error
// body, an API response's x-ms-request-id) to the log lines of the request
// that produced it. Every part of dpsd uses this one generator, so that all
// tracking ids have one form: a random RFC 4122 version 4 UUID, as the DPS
// cloud service's trackingIds are.
package trackid

import (
	"crypto/rand"
	"encoding/hex"
)

// New returns a fresh random version 4 UUID in its canonical lowercase form,
// e.g. "3f2b8c1e-9a4d-4e7f-b2c1-0d5e6f7a8b9c". It never fails: crypto/rand
// does not return errors.
func New() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // variant 10 (RFC 4122)
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], b[10:16])
	return string(s[:])
}
