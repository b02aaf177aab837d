package provision

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/tpmdps/dpsd/internal/jsonlimit"
)

// Request limits (docs/protocol.md section 9).
const (
	// MaxRequestSize is the largest register body accepted (96 KiB, the MQTT message limit).
	MaxRequestSize = 96 << 10
	// MaxRequestDepth is the deepest JSON nesting accepted in a register body.
	MaxRequestDepth = 32
)

// TPMKeys are the base64 TPM2B_PUBLIC keys a TPM device sends and,
// optionally, its EK certificate: base64 DER as read from the TPM's NV (an
// addition of this service; docs/protocol.md section 5).
type TPMKeys struct {
	EndorsementKey            string `json:"endorsementKey"`
	StorageRootKey            string `json:"storageRootKey"`
	EndorsementKeyCertificate string `json:"endorsementKeyCertificate,omitempty"`
}

// RegisterRequest is a register request's body: every field may be missing.
// The registrationId that counts is the connection's; a body one must match it.
type RegisterRequest struct {
	RegistrationID string          `json:"registrationId"`
	TPM            *TPMKeys        `json:"tpm,omitempty"`
	Payload        json.RawMessage `json:"payload,omitempty"`
	// CSR is a certificate signing request in the 2025-07-01-preview field
	// (base64 DER; PEM is accepted too): the answer carries
	// issuedCertificateChain.
	CSR string `json:"csr,omitempty"`
	// ClientCertificateCSR is one in the 2021-11-01-preview field (IoT
	// Edge's identity service): the answer carries issuedClientCertificate.
	ClientCertificateCSR string `json:"clientCertificateCsr,omitempty"`

	// csr is the checked request of an authenticated register (register.go).
	csr *deviceCSR
}

// ParseRegisterRequest parses a register body from a device. An empty body,
// "{}", "null", a null payload and missing fields are all fine; unknown fields are
// ignored. Bodies over MaxRequestSize, nested deeper than MaxRequestDepth, or
// not a JSON object give an error wrapping ErrBadRequest (answer 400).
func ParseRegisterRequest(body []byte) (RegisterRequest, error) {
	var req RegisterRequest
	if len(body) > MaxRequestSize {
		return req, fmt.Errorf("%w: body of %d bytes exceeds %d", ErrBadRequest, len(body), MaxRequestSize)
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || string(trimmed) == "null" {
		return req, nil
	}
	if err := jsonlimit.CheckDepth(trimmed, MaxRequestDepth); err != nil {
		return req, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if trimmed[0] != '{' {
		return req, fmt.Errorf("%w: body is not a JSON object", ErrBadRequest)
	}
	if err := json.Unmarshal(trimmed, &req); err != nil {
		return RegisterRequest{}, fmt.Errorf("%w: malformed JSON: %w", ErrBadRequest, err)
	}
	if isJSONNull(req.Payload) {
		req.Payload = nil
	}
	return req, nil
}

// isJSONNull reports whether raw is the JSON literal null.
func isJSONNull(raw json.RawMessage) bool {
	return bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}
