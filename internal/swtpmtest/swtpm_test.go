package swtpmtest_test

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/internal/swtpmtest"
)

// serverBlob parses the publics as the server does and builds a blob.
func serverBlob(t *testing.T, ekPub, srkPub, key []byte) []byte {
	t.Helper()
	ek, err := attest.ParsePublic(ekPub)
	if err != nil {
		t.Fatalf("ParsePublic(EK from tpm2-tools): %v", err)
	}
	srk, err := attest.ParsePublic(srkPub)
	if err != nil {
		t.Fatalf("ParsePublic(SRK from tpm2-tools): %v", err)
	}
	blob, err := attest.NewActivationBlob(rand.Reader, ek, srk, key)
	if err != nil {
		t.Fatalf("NewActivationBlob: %v", err)
	}
	return blob
}

func TestAttestBlobOpensWithTPM2Tools(t *testing.T) {
	cases := []struct {
		ek      swtpmtest.EKAlg
		srk     swtpmtest.SRKVariant
		blobLen int
	}{
		{swtpmtest.EKRSA, swtpmtest.SRKRSAEmptyUnique, 766},
		{swtpmtest.EKRSA, swtpmtest.SRKRSAZeroUnique, 766},
		{swtpmtest.EKECC, swtpmtest.SRKECCEmptyUnique, 390},
		{swtpmtest.EKECC, swtpmtest.SRKRSAZeroUnique, 578},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s-ek/srk-%d", c.ek, c.srk), func(t *testing.T) {
			tpm := swtpmtest.Start(t)
			ekPub := tpm.CreateEK(t, c.ek)
			srkPub := tpm.CreateSRK(t, c.srk)
			key := make([]byte, 32)
			if _, err := rand.Read(key); err != nil {
				t.Fatal(err)
			}
			blob := serverBlob(t, ekPub, srkPub, key)
			if len(blob) != c.blobLen {
				t.Errorf("blob is %d bytes, want %d", len(blob), c.blobLen)
			}
			id := tpm.ActivateBlob(t, blob)
			data := []byte("0ne00000001%2Fregistrations%2Fdev\n1700000000")
			got := id.HMAC(t, data)
			m := hmac.New(sha256.New, key)
			m.Write(data)
			if !hmac.Equal(got, m.Sum(nil)) {
				t.Fatalf("tpm2_hmac gave %x, the server computes %x", got, m.Sum(nil))
			}
		})
	}
}

func TestSRKVariantsDiffer(t *testing.T) {
	tpm := swtpmtest.Start(t)
	empty := tpm.CreateSRK(t, swtpmtest.SRKRSAEmptyUnique)
	zero := tpm.CreateSRK(t, swtpmtest.SRKRSAZeroUnique)
	again := tpm.CreateSRK(t, swtpmtest.SRKRSAEmptyUnique)
	if string(empty) == string(zero) {
		t.Fatal("the empty-unique and zero-unique SRKs are the same key: the zeros were not piped")
	}
	if string(empty) != string(again) {
		t.Fatal("the same SRK template gave two keys")
	}
}

func TestBlobForOtherSRKFailsInTPM2Tools(t *testing.T) {
	tpm := swtpmtest.Start(t)
	ekPub := tpm.CreateEK(t, swtpmtest.EKRSA)
	zero := tpm.CreateSRK(t, swtpmtest.SRKRSAZeroUnique)
	tpm.CreateSRK(t, swtpmtest.SRKRSAEmptyUnique) // the SRK the device uses
	_, err := tpm.ActivateBlobErr(t, serverBlob(t, ekPub, zero, make([]byte, 32)))
	if err == nil {
		t.Fatal("a blob for the other SRK activated")
	}
	if !strings.Contains(err.Error(), "tpm2_activatecredential") {
		t.Fatalf("failed elsewhere than in tpm2_activatecredential: %v", err)
	}
}
