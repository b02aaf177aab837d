// Package attest holds the server half of device attestation as pure functions
// with no I/O: strict parsing of TPM 2.0 public areas (EK and SRK), the
// activation blob that delivers an HMAC key to exactly one TPM, SAS tokens,
// symmetric group-key derivation, the DPS MQTT username, and endorsement key
// certificates (parsed with the quirks of certificates read from TPM NV,
// matched to the EK, and verified to roots given as data: ekcert.go,
// ektrust.go).
//
// Everything here can be reviewed against the TPM 2.0 specification (Part 1,
// "Protected Storage" and "Credential Protection") and the DPS protocol
// without reading any transport code.
package attest
