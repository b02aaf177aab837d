package device_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/device/tpmtransport"
)

// A device with a TPM provisions itself, then signs an IoT hub token with
// the hub key that now lives in its TPM.
func ExampleProvision() {
	ctx := context.Background()
	tpm, err := tpmtransport.Open(ctx, "/dev/tpmrm0")
	if err != nil {
		log.Fatal(err)
	}
	defer tpm.Close()
	res, err := device.Provision(ctx, device.Config{
		Host:        "dps.example.com",
		IDScope:     "0ne00000001",
		Attestation: &device.TPM{Device: tpm},
		Timeout:     time.Minute,
	})
	if err != nil {
		log.Fatal(err)
	}
	tok, err := device.SignHubSAS(tpm, device.DefaultHubKeyHandle,
		device.HubResource(res.AssignedHub, res.DeviceID), time.Now().Add(time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.AssignedHub, len(tok) > 0)
}

// A gateway provisions a leaf device that has a symmetric key.
func ExampleSymmetricKey() {
	res, err := device.Provision(context.Background(), device.Config{
		Host:           "dps.example.com",
		IDScope:        "0ne00000001",
		RegistrationID: "sensor-42",
		Attestation:    &device.SymmetricKey{Key: []byte("the device key, 16 to 64 bytes..")},
	})
	var de *device.Error
	switch {
	case err == nil:
		fmt.Println("assigned to", res.AssignedHub)
	case errors.As(err, &de) && de.Refused():
		fmt.Println("refused:", de.Status, de.ErrorCode)
	default:
		fmt.Println("try again later:", err)
	}
}
