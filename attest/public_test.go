package attest_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/tpmdps/dpsd/attest"
)

// tpmFixtureDir holds real TPM2B_PUBLIC encodings (see its README.md).
const tpmFixtureDir = "../testdata/tpm"

// tpmFixture reads one fixture file.
func tpmFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(tpmFixtureDir, name))
	if err != nil {
		t.Fatalf("read fixture: %v", err)
	}
	return b
}

// tpmFixtureNames lists the *.tpm2b fixtures.
func tpmFixtureNames(t testing.TB) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(tpmFixtureDir, "*.tpm2b"))
	if err != nil || len(names) < 9 {
		t.Fatalf("want at least 9 fixtures, found %d (%v)", len(names), err)
	}
	for i := range names {
		names[i] = filepath.Base(names[i])
	}
	return names
}

// tpmParse parses or fails the test.
func tpmParse(t testing.TB, b []byte) *attest.Public {
	t.Helper()
	p, err := attest.ParsePublic(b)
	if err != nil {
		t.Fatalf("ParsePublic: %v", err)
	}
	return p
}

func TestParsePublicFixtures(t *testing.T) {
	for _, name := range tpmFixtureNames(t) {
		t.Run(name, func(t *testing.T) {
			raw := tpmFixture(t, name)
			p := tpmParse(t, raw)
			if !bytes.Equal(p.Bytes(), raw) {
				t.Error("Bytes differ from the input")
			}
			// Name = 0x000b || SHA-256(TPMT_PUBLIC), computed here by hand.
			sum := sha256.Sum256(raw[2:])
			if want := append([]byte{0x00, 0x0b}, sum[:]...); !bytes.Equal(p.Name(), want) {
				t.Errorf("Name %x, want %x", p.Name(), want)
			}
			switch {
			case strings.Contains(name, "rsa2048"):
				k, ok := p.PublicKey().(*rsa.PublicKey)
				if !ok || k.N.BitLen() != 2048 || k.E != 65537 || p.Type() != tpm2.TPMAlgRSA || p.String() != "RSA-2048" {
					t.Errorf("got %T %v, want an RSA-2048 key", p.PublicKey(), p)
				}
			case strings.Contains(name, "eccp256"):
				k, ok := p.PublicKey().(*ecdsa.PublicKey)
				if !ok || k.Curve.Params().Name != "P-256" || p.Type() != tpm2.TPMAlgECC || p.String() != "ECC-P256" {
					t.Errorf("got %T %v, want a P-256 key", p.PublicKey(), p)
				}
			default:
				t.Fatalf("fixture %s names no key type", name)
			}
			if !p.Equal(p) || !p.Equal(tpmParse(t, raw)) {
				t.Error("a key is not Equal to itself")
			}
			// The parser keeps its own copy.
			raw[len(raw)-1] ^= 0xff
			if bytes.Equal(p.Bytes(), raw) {
				t.Error("Public aliases the caller's bytes")
			}
		})
	}
}

func TestPublicEqualAcrossFixtures(t *testing.T) {
	names := tpmFixtureNames(t)
	for i, a := range names {
		for j, b := range names {
			eq := tpmParse(t, tpmFixture(t, a)).Equal(tpmParse(t, tpmFixture(t, b)))
			if eq != (i == j) {
				t.Errorf("%s.Equal(%s) = %v", a, b, eq)
			}
		}
	}
	var nilPub *attest.Public
	if nilPub.Equal(tpmParse(t, tpmFixture(t, names[0]))) || tpmParse(t, tpmFixture(t, names[0])).Equal(nil) {
		t.Error("nil Equal a key")
	}
}

func TestRegistrationIDVectors(t *testing.T) {
	// regids.txt was computed with sha256sum, xxd and base32 (README.md).
	lines := strings.Split(strings.TrimSpace(string(tpmFixture(t, "regids.txt"))), "\n")
	if len(lines) < 9 {
		t.Fatalf("%d vectors", len(lines))
	}
	for _, line := range lines {
		want, name, _ := strings.Cut(line, " ")
		if got := attest.RegistrationID(tpmFixture(t, name)); got != want {
			t.Errorf("RegistrationID(%s) = %q, want %q", name, got, want)
		}
		if err := attest.ValidateRegistrationID(want); err != nil {
			t.Errorf("default registration id %q is not a valid DPS id: %v", want, err)
		}
	}
	// And one by hand: SHA-256("") base32 is the well-known 4OYMIQUY7Q...
	if got, want := attest.RegistrationID(nil), "4oymiquy7qobjgx36tejs35zeqt24qpemsnzgtfeswmrw6csxbkq"; got != want {
		t.Errorf("RegistrationID(empty) = %q, want %q", got, want)
	}
}

// tpmTPMT unmarshals the TPMT_PUBLIC of a fixture for mutation.
func tpmTPMT(t testing.TB, name string) tpm2.TPMTPublic {
	t.Helper()
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](tpmFixture(t, name)[2:])
	if err != nil {
		t.Fatal(err)
	}
	return *pub
}

// tpmEncode marshals a TPMT_PUBLIC as a TPM2B_PUBLIC.
func tpmEncode(pub tpm2.TPMTPublic) []byte { return tpm2.Marshal(tpm2.New2B(pub)) }

// tpmWith2B re-prefixes body with its correct size.
func tpmWith2B(body []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(body))), body...)
}

func TestParsePublicRejects(t *testing.T) {
	rsaEK := tpmFixture(t, "ek-rsa2048.sim.tpm2b")
	eccEK := tpmFixture(t, "ek-eccp256.sim.tpm2b")
	rsaT := func() tpm2.TPMTPublic { return tpmTPMT(t, "ek-rsa2048.sim.tpm2b") }
	eccT := func() tpm2.TPMTPublic { return tpmTPMT(t, "ek-eccp256.sim.tpm2b") }
	rsaWith := func(bits int, exp uint32) []byte {
		p := rsaT()
		parms, _ := p.Parameters.RSADetail()
		parms.KeyBits = tpm2.TPMIRSAKeyBits(bits)
		parms.Exponent = exp
		p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, parms)
		mod := make([]byte, bits/8)
		mod[0], mod[len(mod)-1] = 0xc1, 0x01
		p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: mod})
		return tpmEncode(p)
	}
	eccWith := func(curve tpm2.TPMECCCurve, size int) []byte {
		p := eccT()
		parms, _ := p.Parameters.ECCDetail()
		parms.CurveID = curve
		p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, parms)
		x := bytes.Repeat([]byte{1}, size)
		p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: x}, Y: tpm2.TPM2BECCParameter{Buffer: x}})
		return tpmEncode(p)
	}
	nameAlg := func(alg tpm2.TPMAlgID) []byte {
		p := rsaT()
		p.NameAlg = alg
		return tpmEncode(p)
	}
	eccPoint := func(mutate func(x, y []byte) ([]byte, []byte)) []byte {
		p := eccT()
		pt, _ := p.Unique.ECC()
		x, y := mutate(append([]byte(nil), pt.X.Buffer...), append([]byte(nil), pt.Y.Buffer...))
		p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: x}, Y: tpm2.TPM2BECCParameter{Buffer: y}})
		return tpmEncode(p)
	}
	reservedBit := append([]byte(nil), rsaEK...)
	reservedBit[2+4+3] |= 0x01 // objectAttributes bit 0 is reserved (Part 2, 8.3.2)
	symcipher := tpmEncode(tpm2.TPMTPublic{
		Type: tpm2.TPMAlgSymCipher, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{Decrypt: true, SignEncrypt: true, UserWithAuth: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgSymCipher, &tpm2.TPMSSymCipherParms{Sym: tpm2.TPMTSymDefObject{
			Algorithm: tpm2.TPMAlgAES, KeyBits: tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
			Mode: tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB)}}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgSymCipher, &tpm2.TPM2BDigest{Buffer: make([]byte, 32)}),
	})
	keyedhash := tpmEncode(tpm2.TPMTPublic{
		Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{SignEncrypt: true, UserWithAuth: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{
			Scheme: tpm2.TPMAlgHMAC, Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256})}}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: make([]byte, 32)}),
	})
	modulus := func(mutate func(n []byte)) []byte {
		p := rsaT()
		u, _ := p.Unique.RSA()
		n := append([]byte(nil), u.Buffer...)
		mutate(n)
		p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: n})
		return tpmEncode(p)
	}

	cases := []struct {
		name  string
		in    []byte
		want  error
		field string
	}{
		{"empty", nil, attest.ErrMalformedPublic, "size"},
		{"one byte", []byte{0}, attest.ErrMalformedPublic, "size"},
		{"zero size", []byte{0, 0}, attest.ErrMalformedPublic, "size"},
		{"size prefix too large", append(binary.BigEndian.AppendUint16(nil, uint16(len(rsaEK)-1)), rsaEK[2:]...), attest.ErrMalformedPublic, "size"},
		{"size prefix too small", append(binary.BigEndian.AppendUint16(nil, uint16(len(rsaEK)-3)), rsaEK[2:]...), attest.ErrMalformedPublic, "size"},
		{"trailing byte after the TPM2B", append(append([]byte(nil), rsaEK...), 0), attest.ErrMalformedPublic, "size"},
		{"non-canonical: trailing byte inside the TPM2B", tpmWith2B(append(append([]byte(nil), rsaEK[2:]...), 0)), attest.ErrMalformedPublic, "TPMT_PUBLIC"},
		{"reserved attribute bit", reservedBit, attest.ErrMalformedPublic, "objectAttributes"},
		{"truncated in the modulus", tpmWith2B(rsaEK[2 : len(rsaEK)-10]), attest.ErrMalformedPublic, "TPMT_PUBLIC"},
		{"truncated in the header", tpmWith2B(rsaEK[2:5]), attest.ErrMalformedPublic, "TPMT_PUBLIC"},
		{"truncated ECC point", tpmWith2B(eccEK[2 : len(eccEK)-1]), attest.ErrMalformedPublic, "TPMT_PUBLIC"},
		{"huge", tpmWith2B(make([]byte, 5000)), attest.ErrMalformedPublic, "size"},
		{"RSA-1024", rsaWith(1024, 0), attest.ErrUnsupportedKey, "rsa.keyBits"},
		{"RSA-3072", rsaWith(3072, 0), attest.ErrUnsupportedKey, "rsa.keyBits"},
		{"exponent 3", rsaWith(2048, 3), attest.ErrUnsupportedKey, "rsa.exponent"},
		{"short modulus", modulus(func(n []byte) { n[0] = 0 }), attest.ErrUnsupportedKey, "rsa.unique"},
		{"even modulus", modulus(func(n []byte) { n[255] &^= 1 }), attest.ErrUnsupportedKey, "rsa.unique"},
		{"ECC P-384", eccWith(tpm2.TPMECCNistP384, 48), attest.ErrUnsupportedKey, "ecc.curveID"},
		{"ECC point off the curve", eccPoint(func(x, y []byte) ([]byte, []byte) { y[31] ^= 1; return x, y }), attest.ErrUnsupportedKey, "ecc.unique"},
		{"ECC short coordinate", eccPoint(func(x, y []byte) ([]byte, []byte) { return x[1:], y }), attest.ErrUnsupportedKey, "ecc.unique"},
		{"nameAlg SHA-1", nameAlg(tpm2.TPMAlgSHA1), attest.ErrUnsupportedKey, "nameAlg"},
		{"nameAlg SHA-384", nameAlg(tpm2.TPMAlgSHA384), attest.ErrUnsupportedKey, "nameAlg"},
		{"symcipher", symcipher, attest.ErrUnsupportedKey, "type"},
		{"keyedhash", keyedhash, attest.ErrUnsupportedKey, "type"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := attest.ParsePublic(c.in)
			if err == nil {
				t.Fatalf("ParsePublic accepted it: %v", p)
			}
			if !errors.Is(err, c.want) {
				t.Errorf("error %v is not %v", err, c.want)
			}
			var ke *attest.KeyError
			if !errors.As(err, &ke) {
				t.Fatalf("error %v is not a *KeyError", err)
			}
			if ke.Field != c.field {
				t.Errorf("Field %q, want %q (%v)", ke.Field, c.field, err)
			}
			if ke.Reason == "" || !strings.Contains(err.Error(), c.field) {
				t.Errorf("unhelpful error %q", err)
			}
		})
	}
	// Every strict prefix of a real key fails, and none panics.
	for _, name := range []string{"ek-rsa2048.sim.tpm2b", "ek-eccp256.swtpm.tpm2b", "srk-eccp256.sim.tpm2b"} {
		body := tpmFixture(t, name)[2:]
		for n := 0; n < len(body); n++ {
			if _, err := attest.ParsePublic(tpmWith2B(body[:n])); !errors.Is(err, attest.ErrMalformedPublic) {
				t.Fatalf("%s cut to %d bytes: %v", name, n, err)
			}
		}
	}
}

func TestPublicEqualAcrossEncodings(t *testing.T) {
	orig := tpmFixture(t, "srk-rsa2048-zero-unique.sim.tpm2b")
	p := tpmTPMT(t, "srk-rsa2048-zero-unique.sim.tpm2b")
	parms, _ := p.Parameters.RSADetail()
	if parms.Exponent != 0 {
		t.Fatalf("fixture exponent %d, want the default 0", parms.Exponent)
	}
	parms.Exponent = 65537
	p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, parms)
	p.ObjectAttributes.NoDA = false
	explicit := tpmEncode(p)
	a, b := tpmParse(t, orig), tpmParse(t, explicit)
	if bytes.Equal(a.Bytes(), b.Bytes()) || bytes.Equal(a.Name(), b.Name()) {
		t.Fatal("the two encodings should differ")
	}
	if !a.Equal(b) || !b.Equal(a) {
		t.Error("exponent 0 and 65537 encodings of one key are not Equal")
	}
	e := tpmTPMT(t, "ek-eccp256.sim.tpm2b")
	e.AuthPolicy = tpm2.TPM2BDigest{}
	if !tpmParse(t, tpmEncode(e)).Equal(tpmParse(t, tpmFixture(t, "ek-eccp256.sim.tpm2b"))) {
		t.Error("one ECC point with two policies is not Equal")
	}
}
