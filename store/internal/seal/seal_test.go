package seal

import (
	"bytes"
	"errors"
	"testing"

	"github.com/tpmdps/dpsd/store"
)

// TestSealBinding: a sealed value opens only for its own record and key;
// a moved or modified ciphertext, or another key, is store.ErrCorrupt.
func TestSealBinding(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, KeySize), bytes.Repeat([]byte{2}, KeySize)
	s1, err := New(k1)
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := New(k2)
	ct := s1.Seal([]byte("registrations"), []byte("dev1"), []byte("hub-key"))
	if pt, err := s1.Open([]byte("registrations"), []byte("dev1"), ct); err != nil || string(pt) != "hub-key" {
		t.Fatalf("open: %q %v", pt, err)
	}
	bad := bytes.Clone(ct)
	bad[len(bad)-1] ^= 1
	for name, open := range map[string]func() ([]byte, error){
		"other record": func() ([]byte, error) { return s1.Open([]byte("registrations"), []byte("dev2"), ct) },
		"other bucket": func() ([]byte, error) { return s1.Open([]byte("enrollments"), []byte("dev1"), ct) },
		"other key":    func() ([]byte, error) { return s2.Open([]byte("registrations"), []byte("dev1"), ct) },
		"modified":     func() ([]byte, error) { return s1.Open([]byte("registrations"), []byte("dev1"), bad) },
		"short":        func() ([]byte, error) { return s1.Open([]byte("registrations"), []byte("dev1"), ct[:10]) },
	} {
		if _, err := open(); !errors.Is(err, store.ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
	if EqualCheck(KeyCheck(k1), KeyCheck(k2)) || !EqualCheck(KeyCheck(k1), KeyCheck(k1)) {
		t.Fatal("key checks do not tell keys apart")
	}
	if _, err := New(k1[:16]); err == nil {
		t.Fatal("a 16-byte key was accepted")
	}
	a, stripped, err := s1.SealAttestation([]byte("enrollments"), []byte("e"), store.Attestation{Type: store.AttestationSymmetricKey,
		SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: "p", SecondaryKey: "s"}})
	if err != nil || stripped.SymmetricKey.PrimaryKey != "" || bytes.Contains(a, []byte(`"p"`)) {
		t.Fatalf("seal attestation: %v %+v", err, stripped.SymmetricKey)
	}
	if err := s1.OpenAttestation([]byte("enrollments"), []byte("e"), a, &stripped); err != nil ||
		stripped.SymmetricKey.PrimaryKey != "p" || stripped.SymmetricKey.SecondaryKey != "s" {
		t.Fatalf("open attestation: %v %+v", err, stripped.SymmetricKey)
	}
}
