package softtpm_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
	"github.com/tpmdps/dpsd/softtpm"
)

// Persistent handles the imported copies of the software keys use in the
// simulator (away from the Azure SDK handles).
const (
	simEKHandle  tpm2.TPMHandle = 0x81000201
	simSRKHandle tpm2.TPMHandle = 0x81000202
)

// importable returns tmpl with the attributes TPM2_Import requires of an
// object made outside the TPM (fixedTPM, fixedParent and
// sensitiveDataOrigin clear); everything else is the TCG template.
func importable(tmpl tpm2.TPMTPublic) tpm2.TPMTPublic {
	tmpl.ObjectAttributes.FixedTPM = false
	tmpl.ObjectAttributes.FixedParent = false
	tmpl.ObjectAttributes.SensitiveDataOrigin = false
	return tmpl
}

// loadIntoSim imports k under parent (no wrappers: the duplicate is the
// plain TPM2B_SENSITIVE), loads it, persists it at handle and returns it.
func loadIntoSim(t *testing.T, tpm transport.TPM, parent *devtpm.Key, k *softtpm.Key, handle tpm2.TPMHandle) *devtpm.Key {
	t.Helper()
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](k.Public())
	if err != nil {
		t.Fatal(err)
	}
	dup := tpm2.Marshal(tpm2.TPM2BData{Buffer: k.Sensitive()}) // TPM2B_SENSITIVE
	parentAuth := tpm2.AuthHandle{Handle: parent.Handle(), Name: tpm2.TPM2BName{Buffer: parent.Name()}, Auth: tpm2.PasswordAuth(nil)}
	imp, err := tpm2.Import{
		ParentHandle: parentAuth,
		ObjectPublic: *pub,
		Duplicate:    tpm2.TPM2BPrivate{Buffer: dup},
		Symmetric:    tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
	}.Execute(tpm)
	if err != nil {
		t.Fatalf("TPM2_Import of the software key: %v", err)
	}
	ld, err := tpm2.Load{ParentHandle: parentAuth, InPrivate: imp.OutPrivate, InPublic: *pub}.Execute(tpm)
	if err != nil {
		t.Fatalf("TPM2_Load: %v", err)
	}
	if !bytes.Equal(ld.Name.Buffer, k.Name()) {
		t.Errorf("the simulator names the key %x, softtpm %x", ld.Name.Buffer, k.Name())
	}
	_ = devtpm.EvictPersistent(tpm, handle)
	_, err = tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: ld.ObjectHandle, Name: ld.Name},
		PersistentHandle: handle,
	}.Execute(tpm)
	_, _ = tpm2.FlushContext{FlushHandle: ld.ObjectHandle}.Execute(tpm)
	if err != nil {
		t.Fatalf("TPM2_EvictControl: %v", err)
	}
	t.Cleanup(func() { _ = devtpm.EvictPersistent(tpm, handle) })
	key, err := devtpm.ReadPersistent(tpm, handle)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// TestSameKeyAsTheSimulator opens one server blob both in software and in
// the Microsoft reference TPM simulator holding the same EK and SRK (the
// software keys imported into it), and checks that both recover the same
// HMAC key: an HMAC computed inside the simulator equals the one computed
// with the key softtpm recovered.
func TestSameKeyAsTheSimulator(t *testing.T) {
	tpm := tpmsim.Open(t)
	parent, err := devtpm.CreateSRK(tpm, devtpm.SRKRSAEmptyUnique)
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()

	for _, alg := range []softtpm.Alg{softtpm.RSA2048, softtpm.ECCP256} {
		t.Run(alg.String(), func(t *testing.T) {
			ekT, _ := softtpm.EKTemplate(alg)
			srkT, _ := softtpm.SRKTemplate(alg)
			ek, err := softtpm.NewKey(rand.Reader, importable(ekT))
			if err != nil {
				t.Fatal(err)
			}
			srk, err := softtpm.NewKey(rand.Reader, importable(srkT))
			if err != nil {
				t.Fatal(err)
			}
			soft := &softtpm.Device{EK: ek, SRK: srk}
			simEK := loadIntoSim(t, tpm, parent, ek, simEKHandle)
			simSRK := loadIntoSim(t, tpm, parent, srk, simSRKHandle)

			key := randomKey(t, 32)
			blob := blobFor(t, soft, key)
			softKey, err := soft.Activate(blob)
			if err != nil {
				t.Fatalf("softtpm Activate: %v", err)
			}
			if !bytes.Equal(softKey, key) {
				t.Fatalf("softtpm recovered %x, want %x", softKey, key)
			}
			idKey, err := devtpm.Activate(simEK, simSRK, blob)
			if err != nil {
				t.Fatalf("simulator Activate: %v", err)
			}
			defer idKey.Close()
			data := []byte("0ne0000TEST%2Fregistrations%2Fdevice-1\n1893456000")
			simMAC, err := idKey.HMAC(data)
			if err != nil {
				t.Fatal(err)
			}
			m := hmac.New(sha256.New, softKey)
			m.Write(data)
			if !hmac.Equal(simMAC, m.Sum(nil)) {
				t.Fatalf("the simulator and softtpm opened different keys: HMACs %x and %x", simMAC, m.Sum(nil))
			}
		})
	}
}
