package provision

// The device side for the TPM tests: device/devtpm (go-tpm) on the Microsoft
// reference simulator, one instance per test process.

import (
	"encoding/base64"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
)

// tpmDevice is a device's EK and SRK, transient in the simulator until cleanup.
type tpmDevice struct {
	t       testing.TB
	ek, srk *devtpm.Key
}

func newTPMDevice(t testing.TB, alg devtpm.Alg, srkT devtpm.SRKTemplate) *tpmDevice {
	t.Helper()
	tpm := tpmsim.Open(t)
	ek, err := devtpm.CreateEK(tpm, alg)
	if err != nil {
		t.Fatalf("CreateEK: %v", err)
	}
	t.Cleanup(func() { _ = ek.Close() })
	srk, err := devtpm.CreateSRK(tpm, srkT)
	if err != nil {
		t.Fatalf("CreateSRK: %v", err)
	}
	t.Cleanup(func() { _ = srk.Close() })
	return &tpmDevice{t: t, ek: ek, srk: srk}
}

// otherEK returns the TPM2B_PUBLIC of an EK this device does not use.
func otherEK(t testing.TB) []byte {
	t.Helper()
	ek, err := devtpm.CreateEK(tpmsim.Open(t), devtpm.ECCP256)
	if err != nil {
		t.Fatalf("CreateEK: %v", err)
	}
	defer ek.Close()
	return append([]byte(nil), ek.Public()...)
}

func (d *tpmDevice) ekPublic() []byte { return d.ek.Public() }

func (d *tpmDevice) keys() *TPMKeys {
	return &TPMKeys{EndorsementKey: b64(d.ek.Public()), StorageRootKey: b64(d.srk.Public())}
}

func (d *tpmDevice) registrationID() string { return attest.RegistrationID(d.ek.Public()) }

// hmacKey is an HMAC key imported from a blob and loaded in the TPM.
type hmacKey struct {
	t testing.TB
	k *devtpm.IdentityKey
}

// activate opens a base64 activation blob in the TPM and loads its key.
func (d *tpmDevice) activate(blobB64 string) (*hmacKey, error) {
	raw, err := base64.StdEncoding.DecodeString(blobB64)
	if err != nil {
		return nil, err
	}
	k, err := devtpm.Activate(d.ek, d.srk, raw)
	if err != nil {
		return nil, err
	}
	h := &hmacKey{t: d.t, k: k}
	d.t.Cleanup(h.close)
	return h, nil
}

// close flushes the key (idempotent).
func (h *hmacKey) close() {
	if h.k != nil {
		_ = h.k.Close()
		h.k = nil
	}
}

// mac computes TPM2_HMAC(key, SHA-256, data) in the TPM.
func (h *hmacKey) mac(data []byte) []byte {
	h.t.Helper()
	out, err := h.k.HMAC(data)
	if err != nil {
		h.t.Fatalf("TPM HMAC: %v", err)
	}
	return out
}

// sas signs a device SAS for regID in the TPM, with skn = keyName.
func (h *hmacKey) sas(regID string, expiry time.Time, keyName string) []byte {
	h.t.Helper()
	tok, err := h.k.SASToken(attest.RegistrationResource(testScope, regID), keyName, expiry)
	if err != nil {
		h.t.Fatalf("TPM SAS: %v", err)
	}
	return []byte(tok)
}
