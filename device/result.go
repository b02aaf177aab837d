package device

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"strconv"
)

// Registration statuses found in a final answer.
const (
	StatusAssigning = "assigning"
	StatusAssigned  = "assigned"
	StatusFailed    = "failed"
	StatusDisabled  = "disabled"
)

// Result is the outcome of a provisioning: where the device goes and what
// the service said. JSON names follow the DPS registrationState.
type Result struct {
	// RegistrationID is the device's registration id as the service spells it.
	RegistrationID string `json:"registrationId"`
	// OperationID is the service's id of the registration operation.
	OperationID string `json:"operationId"`
	// Status is the final registration status: assigned, failed or disabled.
	Status string `json:"status"`
	// AssignedHub is the IoT hub host name the device is assigned to.
	AssignedHub string `json:"assignedHub,omitempty"`
	// DeviceID is the device's id on that hub.
	DeviceID string `json:"deviceId,omitempty"`
	// Substatus says how the assignment came about (initialAssignment, deviceDataMigrated, ...).
	Substatus string `json:"substatus,omitempty"`
	// Payload is the service's (custom allocation) payload for the device, if any.
	Payload json.RawMessage `json:"payload,omitempty"`
	// RegistrationState is the registrationState object exactly as received.
	RegistrationState json.RawMessage `json:"registrationState,omitempty"`
	// State is RegistrationState parsed.
	State RegistrationState `json:"-"`
	// HubKey says where a TPM device's hub key now lives (nil for other attestations).
	HubKey *HubKey `json:"hubKey,omitempty"`
	// IssuedCertificate describes the operational certificate issued for
	// Config.CertificateKey; nil when none was asked for.
	IssuedCertificate *IssuedCertificate `json:"issuedCertificate,omitempty"`
	// CertificateChain is that certificate and its issuers, leaf first, as
	// the service sent them (the root included); CertificatePEM is what a
	// TLS client presents.
	CertificateChain []*x509.Certificate `json:"-"`
}

// RegistrationState is the parsed registrationState of an operation
// (docs/protocol.md section 4); field names and meanings are the DPS ones. Times
// are kept as the RFC 3339 text received.
type RegistrationState struct {
	RegistrationID         string              `json:"registrationId,omitempty"`
	CreatedDateTimeUTC     string              `json:"createdDateTimeUtc,omitempty"`
	AssignedHub            string              `json:"assignedHub,omitempty"`
	DeviceID               string              `json:"deviceId,omitempty"`
	Status                 string              `json:"status,omitempty"`
	Substatus              string              `json:"substatus,omitempty"`
	LastUpdatedDateTimeUTC string              `json:"lastUpdatedDateTimeUtc,omitempty"`
	ETag                   string              `json:"etag,omitempty"`
	ErrorCode              int                 `json:"errorCode,omitempty"`
	ErrorMessage           string              `json:"errorMessage,omitempty"`
	Payload                json.RawMessage     `json:"payload,omitempty"`
	TPM                    *TPMRegistration    `json:"tpm,omitempty"`
	SymmetricKey           *SymKeyRegistration `json:"symmetricKey,omitempty"`
	X509                   json.RawMessage     `json:"x509,omitempty"`
	// IssuedCertificateChain answers a "csr": base64 DER, leaf first.
	IssuedCertificateChain []string `json:"issuedCertificateChain,omitempty"`
	// IssuedClientCertificate answers a "clientCertificateCsr": PEM, leaf first.
	IssuedClientCertificate string `json:"issuedClientCertificate,omitempty"`
}

// TPMRegistration is registrationState.tpm: the blob carrying the hub key.
type TPMRegistration struct {
	// AuthenticationKey is the base64 activation blob of the hub key.
	AuthenticationKey string `json:"authenticationKey,omitempty"`
	// EnrollmentGroupID names the TPM group that admitted the device (by
	// its EK certificate), if a group did.
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
}

// SymKeyRegistration is registrationState.symmetricKey.
type SymKeyRegistration struct {
	// EnrollmentGroupID names the group whose derived key the device used.
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
}

// HubKey locates a TPM device's long-term hub key inside the TPM.
type HubKey struct {
	// Handle is the persistent handle (for example "0x81000101"), or "" when
	// the key was loaded transiently and flushed (not persisted).
	Handle string `json:"handle,omitempty"`
	// Public and Private are the key's TPM2B_PUBLIC and TPM2B_PRIVATE (the
	// latter wrapped by this TPM's SRK, useless elsewhere) when it was not
	// persisted: reload it with devtpm.LoadIdentityKey.
	Public  []byte `json:"public,omitempty"`
	Private []byte `json:"private,omitempty"`
}

// operationBody is a 2xx answer to a register or poll request.
type operationBody struct {
	OperationID       string          `json:"operationId"`
	Status            string          `json:"status"`
	RegistrationState json.RawMessage `json:"registrationState"`
}

// errorBody is a non-2xx answer, including the TPM challenge (401 with authenticationKey).
type errorBody struct {
	ErrorCode         flexInt `json:"errorCode"`
	TrackingID        string  `json:"trackingId"`
	Message           string  `json:"message"`
	AuthenticationKey string  `json:"authenticationKey"`
	KeyName           string  `json:"keyName"`
}

// flexInt accepts a JSON number or a numeric string (errorCode has been seen
// both ways); anything else reads as 0 rather than failing the whole body.
type flexInt int

// UnmarshalJSON implements json.Unmarshaler leniently.
func (f *flexInt) UnmarshalJSON(b []byte) error {
	b = bytes.Trim(b, `"`)
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err == nil && n >= 0 && n < 1<<31 {
		*f = flexInt(n)
	}
	return nil
}

// parseOperation decodes a 2xx body. Its registrationState, when present,
// must be an object.
func parseOperation(body []byte) (operationBody, RegistrationState, error) {
	var op operationBody
	var st RegistrationState
	if err := json.Unmarshal(body, &op); err != nil {
		return op, st, fmt.Errorf("%w: bad operation body: %v", ErrProtocol, err)
	}
	if len(op.RegistrationState) > 0 && !bytes.Equal(op.RegistrationState, []byte("null")) {
		if err := json.Unmarshal(op.RegistrationState, &st); err != nil {
			return op, st, fmt.Errorf("%w: bad registrationState: %v", ErrProtocol, err)
		}
	}
	return op, st, nil
}

// parseError decodes a non-2xx body; a body that is not JSON yields the zero
// value (the status alone still says what happened).
func parseError(body []byte) errorBody {
	var e errorBody
	_ = json.Unmarshal(body, &e)
	return e
}
