package softtpm_test

import (
	"crypto/rand"
	"errors"
	"testing"

	"github.com/tpmdps/dpsd/softtpm"
)

// FuzzActivate: blobs come from the network. Every input either opens or
// fails with a classified error, and never panics.
func FuzzActivate(f *testing.F) {
	d, err := softtpm.NewDevice(rand.Reader, softtpm.ECCP256)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(blobFor(f, d, randomKey(f, 32)))
	f.Add([]byte{0, 1, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, blob []byte) {
		_, err := d.Activate(blob)
		if err != nil && !errors.Is(err, softtpm.ErrMalformed) && !errors.Is(err, softtpm.ErrIntegrity) && !errors.Is(err, softtpm.ErrUnsupported) {
			t.Fatalf("unclassified error: %v", err)
		}
	})
}
