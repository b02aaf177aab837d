package swtpmtest_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/device/tpmtransport"
	"github.com/tpmdps/dpsd/internal/swtpmtest"
)

// TestDevTPMOnSwtpmMatchesTPM2Tools runs the go-tpm device stack (devtpm) on
// libtpms: the EK and both RSA SRK templates it creates are the very keys
// tpm2-tools creates on the same TPM, and it opens attest's blob there too.
func TestDevTPMOnSwtpmMatchesTPM2Tools(t *testing.T) {
	sw := swtpmtest.Start(t)
	toolsEK := sw.CreateEK(t, swtpmtest.EKRSA)
	toolsEmpty := sw.CreateSRK(t, swtpmtest.SRKRSAEmptyUnique)
	toolsZero := sw.CreateSRK(t, swtpmtest.SRKRSAZeroUnique)
	toolsECCEK := sw.CreateEK(t, swtpmtest.EKECC)

	tpm, err := tpmtransport.DialSWTPM(context.Background(), sw.Addr(), tpmtransport.SWTPMOptions{})
	if err != nil {
		t.Fatalf("connect go-tpm to swtpm: %v", err)
	}
	t.Cleanup(func() { _ = tpm.Close() })
	check := func(what string, want []byte, create func() (*devtpm.Key, error)) *devtpm.Key {
		t.Helper()
		k, err := create()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !bytes.Equal(k.Public(), want) {
			t.Errorf("%s: devtpm and tpm2-tools made different keys\n devtpm %x\n tools  %x", what, k.Public(), want)
		}
		return k
	}
	ek := check("RSA EK", toolsEK, func() (*devtpm.Key, error) { return devtpm.CreateEK(tpm, devtpm.RSA2048) })
	defer ek.Close()
	eccEK := check("ECC EK", toolsECCEK, func() (*devtpm.Key, error) { return devtpm.CreateEK(tpm, devtpm.ECCP256) })
	if err := eccEK.Close(); err != nil {
		t.Fatal(err)
	}
	zero := check("zero-unique SRK", toolsZero, func() (*devtpm.Key, error) { return devtpm.CreateSRK(tpm, devtpm.SRKRSAZeroUnique) })
	if err := zero.Close(); err != nil {
		t.Fatal(err)
	}
	srk := check("empty-unique SRK", toolsEmpty, func() (*devtpm.Key, error) { return devtpm.CreateSRK(tpm, devtpm.SRKRSAEmptyUnique) })
	defer srk.Close()

	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	id, err := devtpm.Activate(ek, srk, serverBlob(t, ek.Public(), srk.Public(), key))
	if err != nil {
		t.Fatalf("devtpm.Activate on swtpm: %v", err)
	}
	defer id.Close()
	sig, err := id.HMAC([]byte("data"))
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("data"))
	if !hmac.Equal(sig, m.Sum(nil)) {
		t.Fatal("devtpm HMAC on swtpm differs from the server's")
	}
}
