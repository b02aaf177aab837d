package attest_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/tpmdps/dpsd/attest"
)

// tpmBlobFor builds a blob for two fixtures with a 32-byte key.
func tpmBlobFor(t testing.TB, ek, srk string) []byte {
	t.Helper()
	blob, err := attest.NewActivationBlob(rand.Reader, tpmParse(t, tpmFixture(t, ek)), tpmParse(t, tpmFixture(t, srk)), make([]byte, 32))
	if err != nil {
		t.Fatalf("NewActivationBlob: %v", err)
	}
	return blob
}

func TestNewActivationBlobLayout(t *testing.T) {
	cases := []struct {
		ek, srk              string
		size                 int
		secretSize, seedSize int
	}{
		{"ek-rsa2048.sim.tpm2b", "srk-rsa2048-empty-unique.sim.tpm2b", 766, 256, 256},
		{"ek-rsa2048.swtpm.tpm2b", "srk-rsa2048-zero-unique.swtpm.tpm2b", 766, 256, 256},
		{"ek-eccp256.sim.tpm2b", "srk-eccp256.sim.tpm2b", 390, 68, 68},
		{"ek-eccp256.swtpm.tpm2b", "srk-rsa2048-zero-unique.sim.tpm2b", 578, 68, 256},
	}
	for _, c := range cases {
		t.Run(c.ek+"+"+c.srk, func(t *testing.T) {
			blob := tpmBlobFor(t, c.ek, c.srk)
			if len(blob) != c.size {
				t.Fatalf("blob is %d bytes, want %d", len(blob), c.size)
			}
			parts, err := attest.ParseActivationBlob(blob)
			if err != nil {
				t.Fatalf("ParseActivationBlob: %v", err)
			}
			if !bytes.Equal(parts.Marshal(), blob) {
				t.Error("Marshal does not reproduce the blob")
			}
			// Part 1: TPM2B_DIGEST(32-byte HMAC) || encIdentity (TPM2B of a
			// 16-byte key: 18 bytes).
			if len(parts.CredentialBlob) != 2+32+18 || binary.BigEndian.Uint16(parts.CredentialBlob) != 32 {
				t.Errorf("credential blob %x", parts.CredentialBlob)
			}
			if len(parts.EncryptedSecret) != c.secretSize || len(parts.EncryptedSeed) != c.seedSize {
				t.Errorf("secret %d and seed %d bytes, want %d and %d", len(parts.EncryptedSecret), len(parts.EncryptedSeed), c.secretSize, c.seedSize)
			}
			// Part 3: TPM2B(outer HMAC) || CFB(TPM2B(inner digest) || TPM2B_SENSITIVE of 72 bytes).
			if len(parts.Duplicate) != 2+32+2+32+2+72 || binary.BigEndian.Uint16(parts.Duplicate) != 32 {
				t.Errorf("duplicate of %d bytes", len(parts.Duplicate))
			}
			if len(parts.EncryptedData) != 0 || !bytes.Equal(blob[len(blob)-2:], []byte{0, 0}) {
				t.Error("part 6 is not present and empty")
			}
			pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](parts.Public)
			if err != nil {
				t.Fatalf("part 5: %v", err)
			}
			if !bytes.Equal(tpm2.Marshal(*pub), parts.Public) {
				t.Error("part 5 is not canonical")
			}
			if pub.Type != tpm2.TPMAlgKeyedHash || pub.NameAlg != tpm2.TPMAlgSHA256 || len(pub.AuthPolicy.Buffer) != 0 {
				t.Errorf("identity key type 0x%x nameAlg 0x%x", pub.Type, pub.NameAlg)
			}
			// objectAttributes = 0x00040440: sign | noDA | userWithAuth.
			if attrs := binary.BigEndian.Uint32(parts.Public[4:8]); attrs != 0x00040440 {
				t.Errorf("objectAttributes 0x%08x, want 0x00040440", attrs)
			}
			kh, err := pub.Parameters.KeyedHashDetail()
			if err != nil || kh.Scheme.Scheme != tpm2.TPMAlgHMAC {
				t.Fatalf("scheme: %v", err)
			}
			if h, _ := kh.Scheme.Details.HMAC(); h == nil || h.HashAlg != tpm2.TPMAlgSHA256 {
				t.Error("scheme is not HMAC-SHA256")
			}
		})
	}
}

func TestNewActivationBlobIsFresh(t *testing.T) {
	a := tpmBlobFor(t, "ek-rsa2048.sim.tpm2b", "srk-rsa2048-empty-unique.sim.tpm2b")
	b := tpmBlobFor(t, "ek-rsa2048.sim.tpm2b", "srk-rsa2048-empty-unique.sim.tpm2b")
	pa, _ := attest.ParseActivationBlob(a)
	pb, _ := attest.ParseActivationBlob(b)
	for i, pair := range [][2][]byte{
		{pa.CredentialBlob, pb.CredentialBlob}, {pa.EncryptedSecret, pb.EncryptedSecret},
		{pa.Duplicate, pb.Duplicate}, {pa.EncryptedSeed, pb.EncryptedSeed}, {pa.Public, pb.Public},
	} {
		if bytes.Equal(pair[0], pair[1]) {
			t.Errorf("part %d repeats across two blobs for the same key", i+1)
		}
	}
}

// tpmFailingReader fails after n bytes.
type tpmFailingReader struct{ n int }

func (r *tpmFailingReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, errors.New("entropy exhausted")
	}
	if len(p) > r.n {
		p = p[:r.n]
	}
	r.n -= len(p)
	return len(p), nil
}

func TestNewActivationBlobRejects(t *testing.T) {
	ek := tpmParse(t, tpmFixture(t, "ek-rsa2048.sim.tpm2b"))
	srk := tpmParse(t, tpmFixture(t, "srk-rsa2048-zero-unique.sim.tpm2b"))
	for _, n := range []int{0, 15, 65, 200} {
		if _, err := attest.NewActivationBlob(rand.Reader, ek, srk, make([]byte, n)); !errors.Is(err, attest.ErrBadHMACKey) {
			t.Errorf("%d-byte key: %v, want ErrBadHMACKey", n, err)
		}
	}
	for _, n := range []int{16, 64} {
		if _, err := attest.NewActivationBlob(rand.Reader, ek, srk, make([]byte, n)); err != nil {
			t.Errorf("%d-byte key: %v", n, err)
		}
	}
	if _, err := attest.NewActivationBlob(rand.Reader, nil, srk, make([]byte, 32)); err == nil {
		t.Error("nil EK accepted")
	}
	if _, err := attest.NewActivationBlob(rand.Reader, ek, nil, make([]byte, 32)); err == nil {
		t.Error("nil SRK accepted")
	}
	// A signing key (not a restricted decryption key) cannot receive secrets.
	sign := tpmTPMT(t, "ek-rsa2048.sim.tpm2b")
	sign.ObjectAttributes.Decrypt = false
	sign.ObjectAttributes.SignEncrypt = true
	signPub := tpmParse(t, tpmEncode(sign))
	if _, err := attest.NewActivationBlob(rand.Reader, signPub, srk, make([]byte, 32)); !errors.Is(err, attest.ErrUnsupportedKey) {
		t.Errorf("signing EK: %v, want ErrUnsupportedKey", err)
	}
	if _, err := attest.NewActivationBlob(rand.Reader, ek, signPub, make([]byte, 32)); !errors.Is(err, attest.ErrUnsupportedKey) {
		t.Errorf("signing SRK: %v, want ErrUnsupportedKey", err)
	}
	for _, n := range []int{0, 10, 48, 80, 120} {
		if _, err := attest.NewActivationBlob(&tpmFailingReader{n: n}, ek, srk, make([]byte, 32)); err == nil {
			t.Errorf("randomness failing after %d bytes: no error", n)
		}
	}
	if _, err := attest.NewActivationBlob(io.LimitReader(rand.Reader, 0), ek, srk, make([]byte, 32)); err == nil {
		t.Error("empty randomness: no error")
	}
}

func TestParseActivationBlobRejects(t *testing.T) {
	blob := tpmBlobFor(t, "ek-eccp256.sim.tpm2b", "srk-eccp256.sim.tpm2b")
	for n := 0; n < len(blob); n++ {
		if _, err := attest.ParseActivationBlob(blob[:n]); !errors.Is(err, attest.ErrMalformedBlob) {
			t.Fatalf("blob cut to %d bytes: %v", n, err)
		}
	}
	if _, err := attest.ParseActivationBlob(append(append([]byte(nil), blob...), 0)); !errors.Is(err, attest.ErrMalformedBlob) {
		t.Errorf("trailing byte: %v", err)
	}
	emptyPart := (&attest.ActivationBlob{CredentialBlob: []byte{1}, EncryptedSecret: []byte{1}, Duplicate: []byte{1}, EncryptedSeed: []byte{1}}).Marshal()
	if _, err := attest.ParseActivationBlob(emptyPart); !errors.Is(err, attest.ErrMalformedBlob) {
		t.Errorf("empty public part: %v", err)
	}
	// Part 6 may carry data.
	withData := &attest.ActivationBlob{CredentialBlob: []byte{1}, EncryptedSecret: []byte{2}, Duplicate: []byte{3}, EncryptedSeed: []byte{4}, Public: []byte{5}, EncryptedData: []byte{6, 7}}
	got, err := attest.ParseActivationBlob(withData.Marshal())
	if err != nil || !bytes.Equal(got.EncryptedData, []byte{6, 7}) || !bytes.Equal(got.Public, []byte{5}) {
		t.Errorf("round trip with part 6 data: %+v, %v", got, err)
	}
}
