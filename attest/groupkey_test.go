package attest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestGroupKeyDerivesAsDeriveDeviceKey: Derive equals DeriveDeviceKey
// (crypto/hmac) for keys of 16 to 64 bytes and ids of any length up to the
// longest registration id, in either spelling.
func TestGroupKeyDerivesAsDeriveDeviceKey(t *testing.T) {
	for _, keyLen := range []int{MinSymmetricKeyLen, 32, 55, 56, 63, MaxSymmetricKeyLen} {
		key := make([]byte, keyLen)
		for i := range key {
			key[i] = byte(i*7 + keyLen)
		}
		g, err := NewGroupKey(key)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"a", "Dev-01", "dev-01", string(bytes.Repeat([]byte("x"), 55)), string(bytes.Repeat([]byte("y"), 56)),
			string(bytes.Repeat([]byte("z"), MaxRegistrationIDLen))} {
			d := NewDeviceKeyDeriver(id)
			for range 2 { // a deriver is reused across groups
				got := d.Derive(g)
				if want := DeriveDeviceKey(key, id); !bytes.Equal(got[:], want) {
					t.Fatalf("key %d bytes, id %q: Derive %x, DeriveDeviceKey %x", keyLen, id, got, want)
				}
			}
		}
	}
}

func TestNewGroupKeyRejectsBadSizes(t *testing.T) {
	for _, n := range []int{0, MinSymmetricKeyLen - 1, MaxSymmetricKeyLen + 1} {
		if _, err := NewGroupKey(make([]byte, n)); !errors.Is(err, ErrInvalidSymmetricKey) {
			t.Errorf("%d-byte key: %v", n, err)
		}
	}
}

// TestDeriveDoesNotAllocate: the per-group work of a CONNECT allocates nothing.
func TestDeriveDoesNotAllocate(t *testing.T) {
	g, err := NewGroupKey(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	d := NewDeviceKeyDeriver("sensor-0042")
	if allocs := testing.AllocsPerRun(100, func() { d.Derive(g) }); allocs != 0 {
		t.Errorf("Derive allocates %v times per call", allocs)
	}
}

func BenchmarkDeriveDeviceKey(b *testing.B) {
	key := bytes.Repeat([]byte{7}, 32)
	g, err := NewGroupKey(key)
	if err != nil {
		b.Fatal(err)
	}
	for _, id := range []string{"sensor-0042", fmt.Sprintf("%0128d", 42)} {
		b.Run(fmt.Sprintf("crypto-hmac/id=%d", len(id)), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				DeriveDeviceKey(key, id)
			}
		})
		b.Run(fmt.Sprintf("GroupKey/id=%d", len(id)), func(b *testing.B) {
			d := NewDeviceKeyDeriver(id)
			b.ReportAllocs()
			for b.Loop() {
				d.Derive(g)
			}
		})
	}
}

// TestVerifySignatureAndClaims: Verify is VerifySignature (the key alone)
// then VerifyClaims (resource and expiry alone), so that a caller trying
// many keys checks the claims once.
func TestVerifySignatureAndClaims(t *testing.T) {
	key := sasTestKey(t)
	tok, err := ParseSASToken(sasTokCSharp)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(sasTestNow, 0)
	if err := tok.VerifySignature(key); err != nil {
		t.Fatalf("VerifySignature with the right key: %v", err)
	}
	if err := tok.VerifySignature(bytes.Repeat([]byte{1}, 32)); !errors.Is(err, ErrSASSignature) {
		t.Fatalf("VerifySignature with another key: %v", err)
	}
	if err := tok.VerifyClaims(sasTestResource, now, SASPolicy{}); err != nil {
		t.Fatalf("VerifyClaims: %v", err)
	}
	if err := tok.VerifyClaims("0ne00000A0A/registrations/other", now, SASPolicy{}); !errors.Is(err, ErrSASResource) {
		t.Fatalf("VerifyClaims for another resource: %v", err)
	}
	late := time.Unix(sasTestSE, 0).Add(DefaultSASClockSkew + time.Minute)
	if err := tok.VerifyClaims(sasTestResource, late, SASPolicy{}); !errors.Is(err, ErrSASExpired) {
		t.Fatalf("VerifyClaims after the expiry: %v", err)
	}
	if err := tok.VerifySignature(key); err != nil {
		t.Fatal("VerifySignature looks at the expiry")
	}
	if allocs := testing.AllocsPerRun(100, func() {
		var dk [32]byte
		copy(dk[:], key)
		_ = tok.VerifySignature(dk[:])
	}); allocs != 0 {
		t.Errorf("VerifySignature with a key on the stack allocates %v times", allocs)
	}
}
