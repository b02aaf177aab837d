// Command dps-device is the device side of dpsd: it reads a TPM's
// endorsement key for enrollment, and provisions the device over the DPS
// MQTT protocol with TPM, symmetric-key or X.509 attestation, printing the
// assignment as JSON.
//
// Usage:
//
//	dps-device ek        [--tpm SEL] [--ecc]
//	dps-device provision --host H [--port P] --id-scope S [--registration-id ID]
//	                     [--tpm SEL] [--ecc] [--ca-file F | --plain | --websocket]
//	                     [--timeout 60s] [--payload JSON] [--verbose]
//	dps-device provision ... --registration-id ID --symmetric-key KEY
//	dps-device provision ... --registration-id ID --group-key KEY
//	dps-device provision ... [--registration-id ID] --cert FILE --key FILE
//	dps-device hub-sas   --hub HOST --device-id ID [--tpm SEL] [--ttl 1h]
//	dps-device sas       --id-scope S --registration-id ID (--symmetric-key K | --group-key K) [--ttl 1h]
//	dps-device version
//
// Attestation is the TPM unless one of these is given (they exclude each
// other and the TPM flags --tpm, --ecc, --identity-handle, --hub-handle):
// --symmetric-key is an individual enrollment's key (base64); --group-key is
// an enrollment group's key (base64), from which the device key is derived
// over --registration-id as given; --cert and --key are PEM files of the
// device certificate (optionally followed by its intermediates) and its key,
// presented in the TLS handshake (not with --plain), and the registration id
// defaults to the certificate's subject CN. Keys given on the command line
// are visible to other local users in the process list: use them for tests
// and demos.
//
// SEL is a TPM selector: /dev/tpmrm0 (default), /dev/tpm0, swtpm:HOST:PORT
// (swtpm's raw TCP socket) or simulator (the in-process reference simulator,
// whose state is lost when the command exits: "ek" and then "provision" with
// --tpm simulator see two different TPMs; use swtpm for demos).
//
// sas prints the SAS token a symmetric-key device sends as its MQTT
// password, for raw MQTT tools (mosquitto_rr, see the README).
//
// Exit codes (see exitCode):
//
//	0  assigned (provision), or success
//	1  usage error or invalid configuration
//	2  refused: CONNACK refusal, a permanent 3xx/4xx answer, or a final
//	   status of failed or disabled (not assigned)
//	3  transport failure, timeout, throttling or server errors that
//	   outlasted the retries, or a protocol error
//	4  TPM error (opening the TPM or any TPM command)
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
