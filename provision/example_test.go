package provision_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/provision"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/bolt"
)

// A symmetric-key device connects, registers and polls; a transport (the MQTT
// hooks) only carries these calls and their answers.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "provision-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	st, err := bolt.Open(filepath.Join(dir, "dps.db"), bolt.Options{Timeout: time.Second})
	if err != nil {
		panic(err)
	}
	defer st.Close()

	deviceKey := bytes.Repeat([]byte{1}, 32)
	if _, err := st.PutEnrollment(ctx, &store.Enrollment{
		RegistrationID: "dev-1",
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
				PrimaryKey: base64.StdEncoding.EncodeToString(deviceKey)}},
			IoTHubHostName: "hub-1.azure-devices.net",
		},
	}, ""); err != nil {
		panic(err)
	}
	svc, err := provision.New(provision.Config{
		IDScope:         "0ne00000A0A",
		Store:           st,
		ChallengeSecret: bytes.Repeat([]byte{2}, 32), // random and persisted in real use
		Logger:          slog.New(slog.DiscardHandler),
	})
	if err != nil {
		panic(err)
	}

	// CONNECT: the password is a SAS token signed with the device key.
	token := attest.SignSAS(deviceKey, attest.RegistrationResource("0ne00000A0A", "dev-1"), time.Now().Add(time.Hour), "registration")
	id, err := svc.Authenticate(ctx, provision.Connect{
		ClientID: "dev-1",
		Username: "0ne00000A0A/registrations/dev-1/api-version=2021-06-01",
		Password: []byte(token),
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("authenticated:", id.Method)

	// PUBLISH $dps/registrations/PUT/iotdps-register/?$rid=1
	req, err := provision.ParseRegisterRequest([]byte(`{"registrationId":"dev-1","payload":null}`))
	if err != nil {
		panic(err)
	}
	resp := svc.Register(ctx, id, req, "tracking-1")
	op := resp.Body.(*provision.OperationStatus)
	fmt.Println("register:", resp.Status, op.Status)

	// PUBLISH $dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=...
	resp = svc.Poll(ctx, id, op.OperationID, "tracking-2")
	final := resp.Body.(*provision.OperationStatus)
	fmt.Println("poll:", resp.Status, final.Status, final.RegistrationState.AssignedHub)
	// Output:
	// authenticated: symmetricKey
	// register: 202 assigning
	// poll: 200 assigned hub-1.azure-devices.net
}
