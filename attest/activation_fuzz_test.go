package attest_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/tpmdps/dpsd/attest"
)

// FuzzParseActivationBlob checks that the device-side blob parser never
// panics, rejects with ErrMalformedBlob, and that what it accepts re-marshals
// to the same bytes. The seed corpus in testdata/fuzz/FuzzParseActivationBlob
// holds real RSA and ECC blobs.
func FuzzParseActivationBlob(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 12))
	f.Fuzz(func(t *testing.T, b []byte) {
		parts, err := attest.ParseActivationBlob(b)
		if err != nil {
			if !errors.Is(err, attest.ErrMalformedBlob) {
				t.Fatalf("error %v is not ErrMalformedBlob", err)
			}
			return
		}
		if !bytes.Equal(parts.Marshal(), b) {
			t.Fatalf("accepted %x but re-marshals differently", b)
		}
	})
}
