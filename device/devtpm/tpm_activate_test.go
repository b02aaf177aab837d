package devtpm_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device/devtpm"
)

// mustKeys creates a transient EK and SRK, closed at the end of the test.
func mustKeys(t *testing.T, tpm transport.TPM, alg devtpm.Alg, srkT devtpm.SRKTemplate) (ek, srk *devtpm.Key) {
	t.Helper()
	ek, err := devtpm.CreateEK(tpm, alg)
	if err != nil {
		t.Fatalf("CreateEK(%v): %v", alg, err)
	}
	t.Cleanup(func() { _ = ek.Close() })
	srk, err = devtpm.CreateSRK(tpm, srkT)
	if err != nil {
		t.Fatalf("CreateSRK(%v): %v", srkT, err)
	}
	t.Cleanup(func() { _ = srk.Close() })
	return ek, srk
}

// serverBlob builds a blob as the server does, from the public bytes only.
func serverBlob(t *testing.T, ekPub, srkPub, key []byte) []byte {
	t.Helper()
	ek, err := attest.ParsePublic(ekPub)
	if err != nil {
		t.Fatalf("ParsePublic(EK): %v", err)
	}
	srk, err := attest.ParsePublic(srkPub)
	if err != nil {
		t.Fatalf("ParsePublic(SRK): %v", err)
	}
	blob, err := attest.NewActivationBlob(rand.Reader, ek, srk, key)
	if err != nil {
		t.Fatalf("NewActivationBlob: %v", err)
	}
	return blob
}

// randomKey returns 32 random bytes.
func randomKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// softHMAC is HMAC-SHA256 in software, as the server verifies it.
func softHMAC(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}

func TestActivateEveryKeyCombination(t *testing.T) {
	tpm := simTPM(t)
	cases := []struct {
		ek      devtpm.Alg
		srk     devtpm.SRKTemplate
		blobLen int
	}{
		{devtpm.RSA2048, devtpm.SRKRSAEmptyUnique, 766},
		{devtpm.RSA2048, devtpm.SRKRSAZeroUnique, 766},
		{devtpm.RSA2048, devtpm.SRKECCP256, 578},
		{devtpm.ECCP256, devtpm.SRKRSAEmptyUnique, 578},
		{devtpm.ECCP256, devtpm.SRKRSAZeroUnique, 578},
		{devtpm.ECCP256, devtpm.SRKECCP256, 390},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%v/%v", c.ek, c.srk), func(t *testing.T) {
			ek, srk := mustKeys(t, tpm, c.ek, c.srk)
			key := randomKey(t)
			blob := serverBlob(t, ek.Public(), srk.Public(), key)
			if len(blob) != c.blobLen {
				t.Errorf("blob is %d bytes, want %d", len(blob), c.blobLen)
			}
			id, err := devtpm.Activate(ek, srk, blob)
			if err != nil {
				t.Fatalf("Activate: %v", err)
			}
			defer id.Close()
			data := []byte("scope/registrations/dev\n1700000000")
			got, err := id.HMAC(data)
			if err != nil {
				t.Fatalf("HMAC: %v", err)
			}
			if want := softHMAC(key, data); !hmac.Equal(got, want) {
				t.Fatalf("TPM HMAC %x, server HMAC %x", got, want)
			}
		})
	}
}

func TestIdentityKeyReloadAndLongHMAC(t *testing.T) {
	tpm := simTPM(t)
	ek, srk := mustKeys(t, tpm, devtpm.RSA2048, devtpm.SRKRSAZeroUnique)
	key := randomKey(t)
	id, err := devtpm.Activate(ek, srk, serverBlob(t, ek.Public(), srk.Public(), key))
	if err != nil {
		t.Fatalf("Activate: %v", err)
	}
	pub, priv := id.Public(), id.Private()
	if err := id.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := id.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	again, err := devtpm.LoadIdentityKey(srk, pub, priv)
	if err != nil {
		t.Fatalf("LoadIdentityKey: %v", err)
	}
	defer again.Close()
	// An HMAC sequence takes a transient slot: free the EK's (the simulator
	// has three).
	if err := ek.Close(); err != nil {
		t.Fatal(err)
	}
	// 2500 bytes need an HMAC sequence (TPM2_HMAC takes at most 1024).
	for _, n := range []int{0, 1024, 1025, 2500} {
		data := bytes.Repeat([]byte{byte(n)}, n)
		got, err := again.HMAC(data)
		if err != nil {
			t.Fatalf("HMAC(%d bytes): %v", n, err)
		}
		if !hmac.Equal(got, softHMAC(key, data)) {
			t.Errorf("HMAC(%d bytes) differs from the server's", n)
		}
	}
	// The identity key's public is exactly part 5 of the blob, size-prefixed.
	if _, err := attest.ParsePublic(pub); err == nil {
		t.Errorf("ParsePublic accepted a keyed-hash public")
	}
}

func TestActivateRejects(t *testing.T) {
	tpm := simTPM(t)
	ek, srk := mustKeys(t, tpm, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	key := randomKey(t)

	t.Run("blob for another EK", func(t *testing.T) {
		// Another TPM's EK: the default template with a software key.
		other, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		tmpl, _ := devtpm.EKTemplateFor(devtpm.RSA2048)
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: other.N.FillBytes(make([]byte, 256))})
		otherEK := tpm2.Marshal(tpm2.New2B(tmpl))
		_, err = devtpm.Activate(ek, srk, serverBlob(t, otherEK, srk.Public(), key))
		wantTPMError(t, err, "TPM2_ActivateCredential")
	})
	t.Run("blob for another SRK", func(t *testing.T) {
		// The same TPM's other RSA SRK template: the classic mix-up.
		zero, err := devtpm.CreateSRK(tpm, devtpm.SRKRSAZeroUnique)
		if err != nil {
			t.Fatal(err)
		}
		zeroPub := zero.Public()
		if err := zero.Close(); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(zeroPub, srk.Public()) {
			t.Fatal("both RSA SRK templates gave the same key")
		}
		_, err = devtpm.Activate(ek, srk, serverBlob(t, ek.Public(), zeroPub, key))
		wantTPMError(t, err, "TPM2_ActivateCredential")
	})
	t.Run("wrong key", func(t *testing.T) {
		id, err := devtpm.Activate(ek, srk, serverBlob(t, ek.Public(), srk.Public(), key))
		if err != nil {
			t.Fatal(err)
		}
		defer id.Close()
		sig, err := id.HMAC([]byte("data"))
		if err != nil {
			t.Fatal(err)
		}
		if hmac.Equal(sig, softHMAC(randomKey(t), []byte("data"))) {
			t.Fatal("a different key verified the TPM's HMAC")
		}
		if !hmac.Equal(sig, softHMAC(key, []byte("data"))) {
			t.Fatal("the right key did not verify")
		}
	})

	blob := serverBlob(t, ek.Public(), srk.Public(), key)
	parts, err := attest.ParseActivationBlob(blob)
	if err != nil {
		t.Fatal(err)
	}
	fields := []struct {
		name    string
		part    *[]byte
		command string
	}{
		{"1 credential blob", &parts.CredentialBlob, "TPM2_ActivateCredential"},
		{"2 encrypted secret", &parts.EncryptedSecret, "TPM2_ActivateCredential"},
		{"3 duplicate", &parts.Duplicate, "TPM2_Import"},
		{"4 encrypted seed", &parts.EncryptedSeed, "TPM2_Import"},
		{"5 public", &parts.Public, "TPM2_Import"},
	}
	for _, f := range fields {
		for _, at := range []string{"first", "middle", "last"} {
			t.Run("flipped byte in part "+f.name+" "+at, func(t *testing.T) {
				orig := *f.part
				flipped := append([]byte(nil), orig...)
				i := map[string]int{"first": 0, "middle": len(orig) / 2, "last": len(orig) - 1}[at]
				flipped[i] ^= 0x01
				*f.part = flipped
				defer func() { *f.part = orig }()
				_, err := devtpm.Activate(ek, srk, parts.Marshal())
				wantTPMError(t, err, f.command)
			})
		}
	}
	t.Run("part 6 size", func(t *testing.T) {
		bad := append([]byte(nil), blob...)
		bad[len(bad)-1] = 1 // part 6 claims one byte that is not there
		_, err := devtpm.Activate(ek, srk, bad)
		if !errors.Is(err, attest.ErrMalformedBlob) {
			t.Fatalf("Activate = %v, want ErrMalformedBlob", err)
		}
	})
	t.Run("EK and SRK swapped", func(t *testing.T) {
		_, err := devtpm.Activate(srk, ek, blob)
		if err == nil {
			t.Fatal("Activate with EK and SRK swapped succeeded")
		}
	})
	// The intact blob still works after all that.
	id, err := devtpm.Activate(ek, srk, blob)
	if err != nil {
		t.Fatalf("Activate(intact blob): %v", err)
	}
	if err := id.Close(); err != nil {
		t.Fatal(err)
	}
}

// wantTPMError checks that err is a *devtpm.CommandError from command
// carrying a TPM response code.
func wantTPMError(t *testing.T, err error, command string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Activate succeeded, want a %s failure", command)
	}
	var ce *devtpm.CommandError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v is not a *devtpm.CommandError", err)
	}
	if ce.Command != command {
		t.Errorf("failed in %s (%v), want %s", ce.Command, err, command)
	}
	var rc tpm2.TPMRC
	if !errors.As(err, &rc) {
		t.Errorf("error %v carries no TPM response code", err)
	}
	t.Logf("rejected as expected: %v", err)
}

func TestPersistentKeys(t *testing.T) {
	tpm := simTPM(t)
	for _, h := range []tpm2.TPMHandle{devtpm.EKHandle, devtpm.SRKHandle, devtpm.IdentityKeyHandle} {
		if err := devtpm.EvictPersistent(tpm, h); err != nil {
			t.Fatalf("EvictPersistent(0x%08x): %v", uint32(h), err)
		}
		t.Cleanup(func() {
			if err := devtpm.EvictPersistent(tpm, h); err != nil {
				t.Errorf("cleanup EvictPersistent: %v", err)
			}
		})
	}
	ek, err := devtpm.ReadOrCreateEK(tpm, devtpm.RSA2048)
	if err != nil {
		t.Fatalf("ReadOrCreateEK (create): %v", err)
	}
	if ek.Handle() != devtpm.EKHandle || !ek.Persistent() {
		t.Fatalf("EK at 0x%08x, want 0x%08x", uint32(ek.Handle()), uint32(devtpm.EKHandle))
	}
	ek2, err := devtpm.ReadOrCreateEK(tpm, devtpm.RSA2048)
	if err != nil {
		t.Fatalf("ReadOrCreateEK (read): %v", err)
	}
	if !bytes.Equal(ek.Public(), ek2.Public()) || !bytes.Equal(ek.Name(), ek2.Name()) {
		t.Fatal("persisted EK reads back differently")
	}
	transientEK, err := devtpm.CreateEK(tpm, devtpm.RSA2048)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(transientEK.Public(), ek.Public()) {
		t.Error("the transient EK differs from the persisted one")
	}
	if err := transientEK.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := devtpm.ReadOrCreateEK(tpm, devtpm.ECCP256); !errors.Is(err, devtpm.ErrKeyMismatch) {
		t.Errorf("ReadOrCreateEK(ECC) over an RSA EK = %v, want ErrKeyMismatch", err)
	}
	srk, err := devtpm.ReadOrCreateSRK(tpm, devtpm.SRKRSAEmptyUnique)
	if err != nil {
		t.Fatalf("ReadOrCreateSRK: %v", err)
	}
	if srk.Handle() != devtpm.SRKHandle {
		t.Fatalf("SRK at 0x%08x", uint32(srk.Handle()))
	}
	key := randomKey(t)
	id, err := devtpm.Activate(ek, srk, serverBlob(t, ek.Public(), srk.Public(), key))
	if err != nil {
		t.Fatalf("Activate with persistent keys: %v", err)
	}
	// Persisting twice replaces the first copy.
	for i := 0; i < 2; i++ {
		id2, err := devtpm.LoadIdentityKey(srk, id.Public(), id.Private())
		if err != nil {
			t.Fatal(err)
		}
		if err := id2.Persist(devtpm.IdentityKeyHandle); err != nil {
			t.Fatalf("Persist #%d: %v", i, err)
		}
		if err := id2.Close(); err != nil { // no-op for a persistent key
			t.Fatal(err)
		}
	}
	if err := id.Close(); err != nil {
		t.Fatal(err)
	}
	opened, err := devtpm.OpenIdentityKey(tpm, devtpm.IdentityKeyHandle)
	if err != nil {
		t.Fatalf("OpenIdentityKey: %v", err)
	}
	sig, err := opened.HMAC([]byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if !hmac.Equal(sig, softHMAC(key, []byte("x"))) {
		t.Fatal("persisted identity key gives another HMAC")
	}
	if _, err := devtpm.ReadPersistent(tpm, 0x81000999); !errors.Is(err, tpm2.TPMRCHandle) {
		t.Errorf("ReadPersistent(empty handle) = %v, want TPM_RC_HANDLE", err)
	}
}

func TestSASToken(t *testing.T) {
	tpm := simTPM(t)
	ek, srk := mustKeys(t, tpm, devtpm.ECCP256, devtpm.SRKECCP256)
	key := randomKey(t)
	id, err := devtpm.Activate(ek, srk, serverBlob(t, ek.Public(), srk.Public(), key))
	if err != nil {
		t.Fatal(err)
	}
	defer id.Close()
	exp := time.Unix(1700000000, 0)
	tok, err := id.SASToken("0ne00000001/registrations/dev-1", "ref.ABC~1", exp)
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "SharedAccessSignature "
	if !strings.HasPrefix(tok, prefix) {
		t.Fatalf("token %q lacks the prefix", tok)
	}
	fields := map[string]string{}
	for _, kv := range strings.Split(strings.TrimPrefix(tok, prefix), "&") {
		k, v, _ := strings.Cut(kv, "=")
		fields[k] = v
	}
	if fields["sr"] != "0ne00000001%2Fregistrations%2Fdev-1" || fields["se"] != "1700000000" || fields["skn"] != "ref.ABC~1" {
		t.Fatalf("token fields %v", fields)
	}
	sig, err := url.QueryUnescape(fields["sig"])
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		t.Fatal(err)
	}
	if !hmac.Equal(raw, softHMAC(key, []byte(fields["sr"]+"\n"+fields["se"]))) {
		t.Fatal("SAS signature does not verify with the server's key")
	}
}
