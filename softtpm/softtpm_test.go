package softtpm_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/softtpm"
)

// blobFor builds a blob as the server does, from the device's public areas.
func blobFor(t testing.TB, d *softtpm.Device, key []byte) []byte {
	t.Helper()
	ek, err := attest.ParsePublic(d.EK.Public())
	if err != nil {
		t.Fatalf("server parser refused the EK: %v", err)
	}
	srk, err := attest.ParsePublic(d.SRK.Public())
	if err != nil {
		t.Fatalf("server parser refused the SRK: %v", err)
	}
	blob, err := attest.NewActivationBlob(rand.Reader, ek, srk, key)
	if err != nil {
		t.Fatalf("NewActivationBlob: %v", err)
	}
	return blob
}

func randomKey(t testing.TB, n int) []byte {
	t.Helper()
	k := make([]byte, n)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestActivateServerBlob(t *testing.T) {
	for _, tc := range []struct {
		alg     softtpm.Alg
		blobLen int
	}{{softtpm.RSA2048, 766}, {softtpm.ECCP256, 390}} {
		t.Run(tc.alg.String(), func(t *testing.T) {
			d, err := softtpm.NewDevice(rand.Reader, tc.alg)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range []int{attest.MinHMACKeySize, 32, attest.MaxHMACKeySize} {
				key := randomKey(t, n)
				blob := blobFor(t, d, key)
				if n == 32 && len(blob) != tc.blobLen {
					t.Errorf("blob is %d bytes, want %d", len(blob), tc.blobLen)
				}
				got, err := d.Activate(blob)
				if err != nil {
					t.Fatalf("Activate (%d-byte key): %v", n, err)
				}
				if !bytes.Equal(got, key) {
					t.Fatalf("Activate recovered %x, want %x", got, key)
				}
			}
		})
	}
}

func TestActivateRefusesOtherDevicesAndTampering(t *testing.T) {
	for _, alg := range []softtpm.Alg{softtpm.RSA2048, softtpm.ECCP256} {
		t.Run(alg.String(), func(t *testing.T) {
			d, err := softtpm.NewDevice(rand.Reader, alg)
			if err != nil {
				t.Fatal(err)
			}
			other, err := softtpm.NewDevice(rand.Reader, alg)
			if err != nil {
				t.Fatal(err)
			}
			blob := blobFor(t, d, randomKey(t, 32))

			// Another device's EK cannot open it.
			if _, err := other.Activate(blob); !errors.Is(err, softtpm.ErrIntegrity) && !errors.Is(err, softtpm.ErrMalformed) {
				t.Errorf("other device: got %v, want an integrity or malformed error", err)
			}
			// The right EK with another SRK: the credential is bound to the SRK's Name.
			mixed := &softtpm.Device{EK: d.EK, SRK: other.SRK}
			if _, err := mixed.Activate(blob); !errors.Is(err, softtpm.ErrIntegrity) {
				t.Errorf("other SRK: got %v, want ErrIntegrity", err)
			}
			parts, err := attest.ParseActivationBlob(blob)
			if err != nil {
				t.Fatal(err)
			}
			// A flipped byte in each protected part is detected.
			flips := map[string]*[]byte{
				"credential": &parts.CredentialBlob,
				"duplicate":  &parts.Duplicate,
				"public":     &parts.Public,
			}
			for name, p := range flips {
				orig := bytes.Clone(*p)
				(*p)[len(*p)-1] ^= 1
				if _, err := d.Activate(parts.Marshal()); !errors.Is(err, softtpm.ErrIntegrity) {
					t.Errorf("flipped %s: got %v, want ErrIntegrity", name, err)
				}
				*p = orig
			}
			// A wrong inner key fails the inner integrity check.
			inner, err := d.ActivateCredential(parts.CredentialBlob, parts.EncryptedSecret)
			if err != nil {
				t.Fatal(err)
			}
			inner[0] ^= 1
			if _, err := d.Import(inner, parts.Public, parts.Duplicate, parts.EncryptedSeed); !errors.Is(err, softtpm.ErrIntegrity) {
				t.Errorf("wrong inner key: got %v, want ErrIntegrity", err)
			}
			if _, err := d.Activate(blob[:len(blob)-3]); !errors.Is(err, softtpm.ErrMalformed) {
				t.Errorf("truncated blob: got %v, want ErrMalformed", err)
			}
		})
	}
}

func TestPublicAreasFollowTheTemplates(t *testing.T) {
	for _, alg := range []softtpm.Alg{softtpm.RSA2048, softtpm.ECCP256} {
		d, err := softtpm.NewDevice(rand.Reader, alg)
		if err != nil {
			t.Fatal(err)
		}
		for name, k := range map[string]*softtpm.Key{"EK": d.EK, "SRK": d.SRK} {
			p, err := attest.ParsePublic(k.Public())
			if err != nil {
				t.Fatalf("%v %s: %v", alg, name, err)
			}
			if !bytes.Equal(p.Name(), k.Name()) {
				t.Errorf("%v %s: Name %x, server computes %x", alg, name, k.Name(), p.Name())
			}
			if len(k.Sensitive()) == 0 {
				t.Errorf("%v %s: empty sensitive area", alg, name)
			}
		}
		if id := attest.RegistrationID(d.EK.Public()); id == "" {
			t.Errorf("%v: empty registration id", alg)
		}
	}
	if _, err := softtpm.NewDevice(rand.Reader, softtpm.Alg(9)); !errors.Is(err, softtpm.ErrUnsupported) {
		t.Errorf("unknown algorithm: got %v, want ErrUnsupported", err)
	}
}

func BenchmarkActivate(b *testing.B) {
	for _, alg := range []softtpm.Alg{softtpm.RSA2048, softtpm.ECCP256} {
		b.Run(alg.String(), func(b *testing.B) {
			d, err := softtpm.NewDevice(rand.Reader, alg)
			if err != nil {
				b.Fatal(err)
			}
			blob := blobFor(b, d, randomKey(b, 32))
			b.ResetTimer()
			for b.Loop() {
				if _, err := d.Activate(blob); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
