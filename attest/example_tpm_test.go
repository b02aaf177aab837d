package attest_test

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"

	"github.com/tpmdps/dpsd/attest"
)

// The server side of a TPM challenge: parse the EK and SRK the device sent,
// build the blob that delivers a fresh HMAC key to that TPM only, and later
// verify what the device signed with it.
func ExampleNewActivationBlob() {
	// endorsementKey and storageRootKey arrive base64-encoded in the register
	// request; here they are read from real TPM fixtures.
	ekBytes, _ := os.ReadFile("../testdata/tpm/ek-rsa2048.sim.tpm2b")
	srkBytes, _ := os.ReadFile("../testdata/tpm/srk-rsa2048-empty-unique.sim.tpm2b")
	ek, err := attest.ParsePublic(ekBytes)
	if err != nil {
		fmt.Println("bad EK:", err)
		return
	}
	srk, err := attest.ParsePublic(srkBytes)
	if err != nil {
		fmt.Println("bad SRK:", err)
		return
	}

	key := make([]byte, 32) // in the broker: derived from the challenge secret
	if _, err := rand.Read(key); err != nil {
		panic(err)
	}
	blob, err := attest.NewActivationBlob(rand.Reader, ek, srk, key)
	if err != nil {
		fmt.Println(err)
		return
	}
	authenticationKey := base64.StdEncoding.EncodeToString(blob)
	fmt.Println("blob bytes:", len(blob), "base64 chars:", len(authenticationKey))

	// The device signs with TPM2_HMAC; the server verifies in constant time.
	toSign := []byte("0ne00000001%2Fregistrations%2Fdev-1\n1700000000")
	m := hmac.New(sha256.New, key)
	m.Write(toSign)
	deviceSig := m.Sum(nil) // what the TPM returns for the same key and data
	m.Reset()
	m.Write(toSign)
	fmt.Println("signature valid:", hmac.Equal(deviceSig, m.Sum(nil)))
	// Output:
	// blob bytes: 766 base64 chars: 1024
	// signature valid: true
}
