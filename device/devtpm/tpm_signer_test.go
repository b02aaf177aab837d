package devtpm_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"testing"

	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/issuer"
)

// TestSigningKeySignsCSR: a signing key created in the TPM signs digests
// that crypto/ecdsa verifies, and a CSR that dpsd's parser accepts; it
// persists at CertKeyHandle and signs again from there.
func TestSigningKeySignsCSR(t *testing.T) {
	tpm := simTPM(t)
	srk, err := devtpm.CreateSRK(tpm, devtpm.SRKECCP256)
	if err != nil {
		t.Fatal(err)
	}
	defer srk.Close()
	k, err := devtpm.CreateSigningKey(srk)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	var _ crypto.Signer = k
	pub, ok := k.Public().(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("public key %T", k.Public())
	}
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		msg := []byte("signed inside the TPM")
		var digest []byte
		switch h {
		case crypto.SHA256:
			d := sha256.Sum256(msg)
			digest = d[:]
		case crypto.SHA384:
			d := sha512.Sum384(msg)
			digest = d[:]
		case crypto.SHA512:
			d := sha512.Sum512(msg)
			digest = d[:]
		}
		sig, err := k.Sign(rand.Reader, digest, h)
		if err != nil {
			t.Fatalf("%v: %v", h, err)
		}
		if !ecdsa.VerifyASN1(pub, digest, sig) {
			t.Fatalf("%v: the TPM's signature does not verify", h)
		}
	}
	if _, err := k.Sign(rand.Reader, make([]byte, 20), crypto.SHA1); err == nil {
		t.Fatal("SHA-1 signed")
	}
	if _, err := k.Sign(rand.Reader, make([]byte, 31), crypto.SHA256); err == nil {
		t.Fatal("a digest of the wrong size signed")
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "tpm-dev"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := issuer.ParseCSR(base64.StdEncoding.EncodeToString(der))
	if err != nil {
		t.Fatalf("dpsd refuses the TPM-signed CSR: %v", err)
	}
	if !pub.Equal(csr.PublicKey) {
		t.Fatal("the CSR carries another key")
	}

	if err := k.Persist(devtpm.CertKeyHandle); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = devtpm.EvictPersistent(tpm, devtpm.CertKeyHandle) })
	again, err := devtpm.OpenSigningKey(tpm, devtpm.CertKeyHandle)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("again"))
	sig, err := again.Sign(nil, d[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatalf("persisted key: %v", err)
	}
	if _, err := devtpm.OpenSigningKey(tpm, 0x81000199); err == nil {
		t.Fatal("opened a missing key")
	}
}

// TestOpenSigningKeyRefusesOtherKeys: a storage key is no signing key.
func TestOpenSigningKeyRefusesOtherKeys(t *testing.T) {
	tpm := simTPM(t)
	srk, err := devtpm.CreateSRK(tpm, devtpm.SRKECCP256)
	if err != nil {
		t.Fatal(err)
	}
	defer srk.Close()
	if err := srk.Persist(0x81000198); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = devtpm.EvictPersistent(tpm, 0x81000198) })
	if _, err := devtpm.OpenSigningKey(tpm, 0x81000198); !errors.Is(err, devtpm.ErrKeyMismatch) {
		t.Fatalf("opened an SRK as signing key: %v", err)
	}
}
