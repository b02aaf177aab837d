package attest_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/tpmdps/dpsd/attest"
)

// A device signs a SAS token with its symmetric key; the broker parses it and
// verifies it against the resource it expects for the connecting device.
func ExampleSignSAS() {
	key, _ := base64.StdEncoding.DecodeString("Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=")
	resource := attest.RegistrationResource("0ne00000A0A", "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6")
	expiry := time.Unix(1700003600, 0)

	token := attest.SignSAS(key, resource, expiry, "")
	fmt.Println(token)

	// Broker side.
	tok, err := attest.ParseSASToken(token)
	if err != nil {
		fmt.Println(err)
		return
	}
	now := time.Unix(1700000000, 0)
	fmt.Println("verify:", tok.Verify(key, resource, now, attest.SASPolicy{}))
	fmt.Println("after expiry:", tok.Verify(key, resource, now.Add(2*time.Hour), attest.SASPolicy{}))
	// Output:
	// SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6&sig=35aVMjhXtHUzngBBu5zXGrJS1O7N%2BjmPqMVacNY45rw%3D&se=1700003600
	// verify: <nil>
	// after expiry: attest: SAS token expired: 3600s ago (clock skew allowance 5m0s)
}

// A device whose key lives in its TPM signs SASStringToSign with TPM2_HMAC
// (simulated here with crypto/hmac) and assembles the token with FormatSAS,
// naming the challenge key it was given in skn.
func ExampleFormatSAS() {
	tpmKey := make([]byte, 32) // the key the activation blob delivered
	resource := attest.EncodeSASResource(attest.RegistrationResource("0ne00000A0A", "dev1"))
	expiry := time.Unix(1700003600, 0)

	toSign := attest.SASStringToSign(resource, expiry)
	fmt.Printf("%q\n", toSign)
	mac := hmac.New(sha256.New, tpmKey) // TPM2_HMAC on a real device
	mac.Write(toSign)

	token := attest.FormatSAS(resource, mac.Sum(nil), expiry, "challenge-ref-1")
	tok, _ := attest.ParseSASToken(token)
	fmt.Println(tok.KeyName, tok.Expiry.Format(time.RFC3339))
	fmt.Println(tok.Verify(tpmKey, "0ne00000A0A/registrations/dev1", time.Unix(1700000000, 0), attest.SASPolicy{}))
	// Output:
	// "0ne00000A0A%2Fregistrations%2Fdev1\n1700003600"
	// challenge-ref-1 2023-11-14T23:13:20Z
	// <nil>
}

// The broker reads the scope, the registration id and the client version
// from the MQTT CONNECT username.
func ExampleParseUsername() {
	u, err := attest.ParseUsername("0ne00000A0A/registrations/Dev:01/api-version=2021-10-01" +
		"&ClientVersion=Microsoft.Azure.Devices.Provisioning.Client%2F1.19.0%20%28.NET%206.0%29")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(u.IDScope)
	fmt.Println(u.RegistrationID)
	fmt.Println(u.APIVersion, attest.IsKnownAPIVersion(u.APIVersion))
	fmt.Println(u.ClientVersion)
	id, _ := attest.NormalizeRegistrationID(u.RegistrationID)
	fmt.Println(id)

	_, err = attest.ParseUsername("0ne00000A0A/registrations/dev1")
	fmt.Println(err)
	// Output:
	// 0ne00000A0A
	// Dev:01
	// 2021-10-01 true
	// Microsoft.Azure.Devices.Provisioning.Client/1.19.0 (.NET 6.0)
	// dev:01
	// attest: malformed MQTT username: want {idScope}/registrations/{registrationId}/api-version={v}
}

// The example of Microsoft's documentation: a device of an enrollment group
// gets HMAC-SHA256(group key, registration id) as its own key.
func ExampleDeriveDeviceKeyBase64() {
	deviceKey, err := attest.DeriveDeviceKeyBase64(
		"8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
		"sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6")
	fmt.Println(deviceKey, err)
	// Output:
	// Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc= <nil>
}
