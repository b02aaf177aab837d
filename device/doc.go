// Package device is the device side of dpsd as a library: a DPS-over-MQTT
// client (Provision) and TPM 2.0 attestation on go-tpm (TPM), for device
// agents and for gateway software provisioning many devices from one process.
//
// # Flow
//
// Provision speaks the Azure DPS MQTT dialect (docs/protocol.md): MQTT 3.1.1 over
// TLS, plain TCP or secure WebSocket, ClientId = registrationId, username
// "{idScope}/registrations/{regId}/api-version={v}&ClientVersion=...",
// register on $dps/registrations/PUT/iotdps-register/?$rid=N and poll on
// $dps/registrations/GET/iotdps-get-operationstatus/?$rid=N&operationId=...,
// answers matched by $rid. retry-after is honoured (0 = now); 429 and 5xx are
// retried with jittered backoff (Backoff); 3xx-428 are permanent. Errors are
// *Error with the Phase they happened in.
//
// With TPM attestation the device first connects with no password and sends
// its EK and SRK; the service answers 401 with an activation blob; the device
// disconnects, opens the blob in its TPM (device/devtpm), signs a SAS token
// with TPM2_HMAC, reconnects with it and registers again. The final answer
// carries a second blob holding the device's hub key, which Provision imports
// into the TPM as well: the hub key never exists outside the TPM, and
// SignHubSAS signs hub tokens with it.
//
// # TPM handles
//
//	0x81010001  EK (devtpm.EKHandle), read or created and persisted
//	0x81000001  SRK (devtpm.SRKHandle), read or created and persisted
//	0x81000100  challenge identity key, only if TPM.IdentityKeyHandle is set
//	0x81000101  hub key (DefaultHubKeyHandle; TPM.HubKeyHandle), replaced on
//	            every successful provisioning
//	0x81000102  operational certificate key (devtpm.CertKeyHandle), where
//	            the caller persists TPM.NewCertificateKey's key once its
//	            certificate is issued (dps-device provision --issue-cert does)
//
// # Operational certificates
//
// With Config.CertificateKey set, the authenticated register request also
// carries a certificate signing request for that key (subject CN = the
// registration id), in "csr" (api-version 2025-07-01-preview, the
// default then) or "clientCertificateCsr" (2021-11-01-preview), and
// Result.CertificateChain holds the certificate issued for it, leaf first.
// The key may live in the TPM (TPM.NewCertificateKey: an unrestricted
// ECDSA P-256 signing key under the SRK, a crypto.Signer that signs the CSR
// and later the device's TLS handshakes) or in software. A service that
// issues nothing to the device answers with the cloud's failure, reported
// as ErrCertificateNotIssued.
//
// # Other attestations
//
// Attestation is the seam: Credentials supplies the CONNECT password or TLS
// client certificate; optional interfaces add register body fields
// (RegisterFielder), answer a challenge (Challenger) and process the final
// state (Finisher). SymmetricKey is a complete implementation in a few lines.
//
// # Concurrency
//
// The package has no global state; Provision calls with distinct Configs
// run concurrently (hundreds per process are tested). A TPM value serializes
// its own TPM command sequences; one physical TPM is one device identity.
// paho's package-level loggers are left untouched.
package device
