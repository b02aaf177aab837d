package devtpm_test

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
)

// The device side of a DPS TPM challenge, on the reference simulator (any
// go-tpm transport works: /dev/tpmrm0, swtpm).
func Example() {
	tpm, release, err := tpmsim.Acquire("Example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer release()

	ek, err := devtpm.CreateEK(tpm, devtpm.RSA2048) // or ReadOrCreateEK
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ek.Close()
	srk, err := devtpm.CreateSRK(tpm, devtpm.SRKRSAEmptyUnique) // or ReadOrCreateSRK
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srk.Close()

	// The device sends ek.Public() and srk.Public() in its register request;
	// the service answers with a blob (authenticationKey) and a keyName.
	serverKey := make([]byte, 32)
	_, _ = rand.Read(serverKey)
	ekPub, _ := attest.ParsePublic(ek.Public())
	srkPub, _ := attest.ParsePublic(srk.Public())
	blob, _ := attest.NewActivationBlob(rand.Reader, ekPub, srkPub, serverKey)

	// Open the blob in the TPM and sign with the key it delivered.
	id, err := devtpm.Activate(ek, srk, blob)
	if err != nil {
		fmt.Println("activation failed:", err)
		return
	}
	defer id.Close()
	token, err := id.SASToken("0ne00000001/registrations/dev-1", "challenge-ref", time.Unix(1700000000, 0))
	if err != nil {
		fmt.Println(err)
		return
	}
	sig, _ := id.HMAC([]byte("0ne00000001%2Fregistrations%2Fdev-1\n1700000000"))
	m := hmac.New(sha256.New, serverKey)
	m.Write([]byte("0ne00000001%2Fregistrations%2Fdev-1\n1700000000"))
	fmt.Println("token:", token[:len("SharedAccessSignature sr=0ne00000001%2Fregistrations%2Fdev-1")])
	fmt.Println("server verifies:", hmac.Equal(sig, m.Sum(nil)))
	// Output:
	// token: SharedAccessSignature sr=0ne00000001%2Fregistrations%2Fdev-1
	// server verifies: true
}
