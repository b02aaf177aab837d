package attest_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/tpmdps/dpsd/attest"
)

// FuzzParsePublic checks that ParsePublic never panics, that every error is a
// *KeyError wrapping one of its sentinels, and that what it accepts is exactly
// canonical: the bytes round-trip, the Name is 34 bytes and the key equals
// itself. The seed corpus in testdata/fuzz/FuzzParsePublic holds real EK and
// SRK encodings from the simulator and swtpm. go-tpm's reflection decoder is
// the oracle for the hand-written one: whatever ParsePublic accepts,
// tpm2.Unmarshal then tpm2.Marshal must reproduce byte for byte, with no
// reserved attribute bit, and yield the same key (fuzzOracle).
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
		fuzzOracle(t, b, p)
		_ = attest.RegistrationID(b)
	})
}

// fuzzOracle checks an accepted TPM2B_PUBLIC against go-tpm: the TPMT_PUBLIC
// unmarshals, re-marshals to exactly the same bytes, has no reserved
// TPMA_OBJECT bit (Part 2, 8.3.2) and nameAlg SHA-256, and holds the same
// public key as p.
func fuzzOracle(t *testing.T, b []byte, p *attest.Public) {
	t.Helper()
	body := b[2:]
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](body)
	if err != nil {
		t.Fatalf("accepted %x, go-tpm cannot unmarshal it: %v", b, err)
	}
	if again := tpm2.Marshal(*pub); !bytes.Equal(again, body) {
		t.Fatalf("accepted %x, go-tpm re-marshals it to %x", body, again)
	}
	const reserved = 1<<0 | 1<<3 | 0xf<<12 | 0xfff<<20
	if attrs := binary.BigEndian.Uint32(body[4:8]); attrs&reserved != 0 || pub.NameAlg != tpm2.TPMAlgSHA256 || pub.Type != p.Type() {
		t.Fatalf("accepted %x: attributes 0x%08x, nameAlg %v, type %v", body, attrs, pub.NameAlg, pub.Type)
	}
	switch k := p.PublicKey().(type) {
	case *rsa.PublicKey:
		parms, err1 := pub.Parameters.RSADetail()
		unique, err2 := pub.Unique.RSA()
		if err1 != nil || err2 != nil {
			t.Fatalf("accepted %x as RSA: %v %v", body, err1, err2)
		}
		want, err := tpm2.RSAPub(parms, unique)
		if err != nil || !k.Equal(want) {
			t.Fatalf("accepted %x: key differs from go-tpm's (%v)", body, err)
		}
	case *ecdsa.PublicKey:
		parms, err1 := pub.Parameters.ECCDetail()
		point, err2 := pub.Unique.ECC()
		if err1 != nil || err2 != nil {
			t.Fatalf("accepted %x as ECC: %v %v", body, err1, err2)
		}
		want, err := tpm2.ECDHPub(parms, point)
		if err != nil {
			t.Fatalf("accepted %x: go-tpm: %v", body, err)
		}
		got, err := k.ECDH()
		if err != nil || !got.Equal(want) {
			t.Fatalf("accepted %x: key differs from go-tpm's (%v)", body, err)
		}
	default:
		t.Fatalf("accepted %x: key type %T", body, k)
	}
}
