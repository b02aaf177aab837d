package attest_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
)

// tpmClose closes a devtpm key at the end of the test.
func tpmClose(t *testing.T, k interface{ Close() error }) {
	t.Cleanup(func() {
		if err := k.Close(); err != nil {
			t.Errorf("flush: %v", err)
		}
	})
}

func TestParsePublicSimulatorKeys(t *testing.T) {
	tpm := tpmsim.Open(t)
	for _, alg := range []devtpm.Alg{devtpm.RSA2048, devtpm.ECCP256} {
		ek, err := devtpm.CreateEK(tpm, alg)
		if err != nil {
			t.Fatal(err)
		}
		p := tpmParse(t, ek.Public())
		// The Name computed here equals the one the TPM reports.
		if !bytes.Equal(p.Name(), ek.Name()) {
			t.Errorf("EK %v: Name %x, TPM says %x", alg, p.Name(), ek.Name())
		}
		if err := ek.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for _, tmpl := range []devtpm.SRKTemplate{devtpm.SRKRSAEmptyUnique, devtpm.SRKRSAZeroUnique, devtpm.SRKECCP256} {
		srk, err := devtpm.CreateSRK(tpm, tmpl)
		if err != nil {
			t.Fatal(err)
		}
		p := tpmParse(t, srk.Public())
		if !bytes.Equal(p.Name(), srk.Name()) {
			t.Errorf("SRK %v: Name %x, TPM says %x", tmpl, p.Name(), srk.Name())
		}
		if err := srk.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestActivationBlobOnSimulator(t *testing.T) {
	tpm := tpmsim.Open(t)
	for _, c := range []struct {
		ek  devtpm.Alg
		srk devtpm.SRKTemplate
	}{
		{devtpm.RSA2048, devtpm.SRKRSAEmptyUnique},
		{devtpm.RSA2048, devtpm.SRKRSAZeroUnique},
		{devtpm.ECCP256, devtpm.SRKECCP256},
		{devtpm.ECCP256, devtpm.SRKRSAEmptyUnique},
	} {
		t.Run(fmt.Sprintf("%v/%v", c.ek, c.srk), func(t *testing.T) {
			ek, err := devtpm.CreateEK(tpm, c.ek)
			if err != nil {
				t.Fatal(err)
			}
			tpmClose(t, ek)
			srk, err := devtpm.CreateSRK(tpm, c.srk)
			if err != nil {
				t.Fatal(err)
			}
			tpmClose(t, srk)
			key := make([]byte, 32)
			if _, err := rand.Read(key); err != nil {
				t.Fatal(err)
			}
			blob, err := attest.NewActivationBlob(rand.Reader, tpmParse(t, ek.Public()), tpmParse(t, srk.Public()), key)
			if err != nil {
				t.Fatal(err)
			}
			id, err := devtpm.Activate(ek, srk, blob)
			if err != nil {
				t.Fatalf("the TPM rejected the blob: %v", err)
			}
			tpmClose(t, id)
			msg := []byte("resource\n1700000000")
			sig, err := id.HMAC(msg)
			if err != nil {
				t.Fatal(err)
			}
			m := hmac.New(sha256.New, key)
			m.Write(msg)
			if !hmac.Equal(sig, m.Sum(nil)) {
				t.Fatal("TPM HMAC differs from the server's")
			}
		})
	}
}
