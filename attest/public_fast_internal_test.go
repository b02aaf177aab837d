package attest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// fastFixtures reads every TPM2B_PUBLIC fixture (real EKs and SRKs from the
// reference simulator and swtpm).
func fastFixtures(t *testing.T) map[string][]byte {
	t.Helper()
	names, err := filepath.Glob(filepath.Join("../testdata/tpm", "*.tpm2b"))
	if err != nil || len(names) < 9 {
		t.Fatalf("want at least 9 fixtures, found %d (%v)", len(names), err)
	}
	out := make(map[string][]byte, len(names))
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(n)] = b
	}
	return out
}

// fastAccepts runs only the fast path of ParsePublic on a TPM2B_PUBLIC.
func fastAccepts(raw []byte) (*Public, *tpm2.TPMTPublic, bool) {
	if len(raw) < 2 || int(binary.BigEndian.Uint16(raw)) != len(raw)-2 {
		return nil, nil, false
	}
	pub, ok := tpmDecodeStandard(raw[2:])
	if !ok {
		return nil, nil, false
	}
	p, err := tpmNewPublic(bytes.Clone(raw), pub)
	if err != nil || p.kemErr != nil {
		return nil, nil, false
	}
	return p, pub, true
}

// strictParse is ParsePublic as it was before the fast path: go-tpm's
// reflection decoder, canonical re-encoding, then the key checks.
func strictParse(raw []byte) (*Public, error) {
	if len(raw) < 2 || int(binary.BigEndian.Uint16(raw)) != len(raw)-2 || len(raw) == 2 || len(raw)-2 > tpmMaxPublicSize {
		return nil, tpmMalformed("size", "bad size")
	}
	pub, err := tpmDecodeStrict(raw[2:])
	if err != nil {
		return nil, err
	}
	return tpmNewPublic(bytes.Clone(raw), pub)
}

// checkAgree fails t unless the fast path agrees with the strict go-tpm
// oracle on raw: whatever the fast path accepts, the strict path accepts with
// the same bytes, Name, key, type and encapsulation key, and the fast
// decoder's structure re-marshals (go-tpm) to exactly the input; and
// ParsePublic's answer equals the strict path's. It reports whether the fast
// path accepted.
func checkAgree(t *testing.T, raw []byte) bool {
	t.Helper()
	fast, fastPub, ok := fastAccepts(raw)
	strict, strictErr := strictParse(raw)
	got, gotErr := ParsePublic(raw)
	if (gotErr == nil) != (strictErr == nil) {
		t.Fatalf("%x: ParsePublic error %v, strict error %v", raw, gotErr, strictErr)
	}
	if gotErr != nil {
		var a, b *KeyError
		if !errors.As(gotErr, &a) || !errors.As(strictErr, &b) || a.Field != b.Field ||
			errors.Is(gotErr, ErrMalformedPublic) != errors.Is(strictErr, ErrMalformedPublic) {
			t.Fatalf("%x: ParsePublic error %v, strict error %v", raw, gotErr, strictErr)
		}
	} else if !got.Equal(strict) || !bytes.Equal(got.Name(), strict.Name()) || got.Type() != strict.Type() || (got.kemErr == nil) != (strict.kemErr == nil) {
		t.Fatalf("%x: ParsePublic and strict parse disagree", raw)
	}
	if !ok {
		return false
	}
	if strictErr != nil {
		t.Fatalf("%x: fast path accepted what the strict path rejects: %v", raw, strictErr)
	}
	if again := tpm2.Marshal(*fastPub); !bytes.Equal(again, raw[2:]) {
		t.Fatalf("fast decoding of %x re-marshals to %x", raw[2:], again)
	}
	if !bytes.Equal(fast.Bytes(), strict.Bytes()) || !bytes.Equal(fast.Name(), strict.Name()) ||
		!fast.Equal(strict) || fast.Type() != strict.Type() || strict.kemErr != nil {
		t.Fatalf("%x: fast and strict parses differ", raw)
	}
	return true
}

// TestParsePublicFastFixtures checks that every real EK and SRK takes the
// fast path and that it agrees with go-tpm.
func TestParsePublicFastFixtures(t *testing.T) {
	for name, raw := range fastFixtures(t) {
		if !checkAgree(t, raw) {
			t.Errorf("%s: the fast path rejected a real TPM key", name)
		}
	}
}

// TestParsePublicFastDifferential mutates every byte of every fixture in
// several ways, truncates and extends it, and checks that the fast path and
// the strict go-tpm path agree on every result.
func TestParsePublicFastDifferential(t *testing.T) {
	accepted, total := 0, 0
	for name, raw := range fastFixtures(t) {
		body := raw[2:]
		try := func(b []byte) {
			total++
			withSize := append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
			if checkAgree(t, withSize) {
				accepted++
			}
		}
		for i := range body {
			for _, x := range []byte{0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff} {
				b := bytes.Clone(body)
				b[i] ^= x
				try(b)
			}
			try(body[:i])
			// Insert and delete one byte at i.
			try(append(append(bytes.Clone(body[:i]), 0), body[i:]...))
			try(append(bytes.Clone(body[:i]), body[i+1:]...))
		}
		try(append(bytes.Clone(body), 0))
		if t.Failed() {
			t.Fatalf("%s: disagreement", name)
		}
	}
	// Flipping bits of a modulus or a policy keeps a valid key: the fast
	// path must have been exercised well beyond the fixtures themselves.
	if accepted < 1000 {
		t.Fatalf("fast path accepted only %d of %d mutations", accepted, total)
	}
	t.Logf("fast path accepted %d of %d mutations", accepted, total)
}

// TestParsePublicFastFallback checks keys go-tpm accepts but the fast
// decoder does not handle: they still parse, through the strict path, as
// before (a signing key, a key with a policy longer than a digest, an RSA
// key with an OAEP scheme).
func TestParsePublicFastFallback(t *testing.T) {
	fx := fastFixtures(t)
	base, err := tpm2.Unmarshal[tpm2.TPMTPublic](fx["ek-rsa2048.sim.tpm2b"][2:])
	if err != nil {
		t.Fatal(err)
	}
	encode := func(p tpm2.TPMTPublic) []byte { return tpm2.Marshal(tpm2.New2B(p)) }

	sign := *base
	sign.ObjectAttributes.Decrypt, sign.ObjectAttributes.SignEncrypt, sign.ObjectAttributes.Restricted = false, true, false
	sign.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
		KeyBits:   2048,
	})
	firmware := *base
	firmware.ObjectAttributes.FirmwareLimited = true
	longPolicy := *base
	longPolicy.AuthPolicy = tpm2.TPM2BDigest{Buffer: make([]byte, 65)}

	for name, raw := range map[string][]byte{"signing key": encode(sign), "firmwareLimited": encode(firmware), "65-byte policy": encode(longPolicy)} {
		if _, _, fast := fastAccepts(raw); fast {
			t.Errorf("%s: fast path accepted it", name)
		}
		p, err := ParsePublic(raw)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		checkAgree(t, raw)
		if name == "signing key" && p.kemErr == nil {
			t.Errorf("signing key can encapsulate")
		}
	}
}
