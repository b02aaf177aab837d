package attest_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/tpmdps/dpsd/attest"
)

// FuzzParsePublic checks that ParsePublic never panics, that every error is a
// *KeyError wrapping one of its sentinels, and that what it accepts is exactly
// canonical: the bytes round-trip, the Name is 34 bytes and the key equals
// itself. The seed corpus in testdata/fuzz/FuzzParsePublic holds real EK and
// SRK encodings from the simulator and swtpm.
func FuzzParsePublic(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := attest.ParsePublic(b)
		if err != nil {
			var ke *attest.KeyError
			if !errors.As(err, &ke) || !(errors.Is(err, attest.ErrMalformedPublic) || errors.Is(err, attest.ErrUnsupportedKey)) {
				t.Fatalf("error %v is not a *KeyError with a sentinel", err)
			}
			return
		}
		if !bytes.Equal(p.Bytes(), b) || len(p.Name()) != 34 || p.PublicKey() == nil || !p.Equal(p) {
			t.Fatalf("accepted %x inconsistently", b)
		}
		again, err := attest.ParsePublic(p.Bytes())
		if err != nil || !again.Equal(p) || !bytes.Equal(again.Name(), p.Name()) {
			t.Fatalf("re-parse: %v", err)
		}
		_ = attest.RegistrationID(b)
	})
}
