package provision

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/tpmdps/dpsd/internal/trackid"
	"github.com/tpmdps/dpsd/store"
)

// Response is a DPS answer: an HTTP status, an optional retry-after, and a
// JSON body. Body is one of *OperationStatus, *TPMChallenge or *ErrorBody.
type Response struct {
	Status     int
	RetryAfter time.Duration // < 0: no retry-after
	Body       any
}

// OperationStatus is the body of a register 202 and of every poll answer.
type OperationStatus struct {
	OperationID       string             `json:"operationId"`
	Status            string             `json:"status"`
	RegistrationState *RegistrationState `json:"registrationState,omitempty"`
}

// RegistrationState is a device's registration as a poll reports it.
type RegistrationState struct {
	RegistrationID         string                    `json:"registrationId"`
	CreatedDateTimeUTC     string                    `json:"createdDateTimeUtc,omitempty"`
	AssignedHub            string                    `json:"assignedHub,omitempty"`
	DeviceID               string                    `json:"deviceId,omitempty"`
	Status                 string                    `json:"status"`
	Substatus              string                    `json:"substatus,omitempty"`
	LastUpdatedDateTimeUTC string                    `json:"lastUpdatedDateTimeUtc,omitempty"`
	ETag                   string                    `json:"etag,omitempty"`
	TPM                    *TPMRegistrationResult    `json:"tpm,omitempty"`
	SymmetricKey           *SymmetricKeyRegistration `json:"symmetricKey,omitempty"`
	X509                   *X509RegistrationResult   `json:"x509,omitempty"`
	Payload                json.RawMessage           `json:"payload,omitempty"`
	ErrorCode              int                       `json:"errorCode,omitempty"`
	ErrorMessage           string                    `json:"errorMessage,omitempty"`
	// IssuedCertificateChain answers a CSR sent in csr (2025-07-01-preview):
	// base64 DER certificates, leaf first, root last, at most three.
	IssuedCertificateChain []string `json:"issuedCertificateChain,omitempty"`
	// IssuedClientCertificate answers a CSR sent in clientCertificateCsr
	// (2021-11-01-preview): the same chain as PEM text.
	IssuedClientCertificate string `json:"issuedClientCertificate,omitempty"`
}

// TPMRegistrationResult carries the activation blob holding the device's
// hub key and, for a TPM admitted by a TPM group, the group's id.
type TPMRegistrationResult struct {
	AuthenticationKey string `json:"authenticationKey,omitempty"`
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
}

// SymmetricKeyRegistration names the enrollment group whose derived key matched.
type SymmetricKeyRegistration struct {
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
}

// X509RegistrationResult is registrationState.x509 (the DPS
// X509RegistrationResult): the device certificate and, for a registration
// through an enrollment group, the group and its signing certificate.
type X509RegistrationResult struct {
	CertificateInfo        *store.X509CertificateInfo `json:"certificateInfo,omitempty"`
	EnrollmentGroupID      string                     `json:"enrollmentGroupId,omitempty"`
	SigningCertificateInfo *store.X509CertificateInfo `json:"signingCertificateInfo,omitempty"`
}

// TPMChallenge is the body of the 401 that carries a TPM challenge.
type TPMChallenge struct {
	AuthenticationKey string `json:"authenticationKey"`
	KeyName           string `json:"keyName"`
	Message           string `json:"message"`
}

// ErrorBody is the DPS error shape; ErrorCode / 1000 is the HTTP status.
type ErrorBody struct {
	ErrorCode    int    `json:"errorCode"`
	TrackingID   string `json:"trackingId"`
	Message      string `json:"message"`
	TimestampUTC string `json:"timestampUtc"`
}

// challengeMessage is the message of a TPM challenge 401 (as DPS words it).
const challengeMessage = "Authorization required, resend request using supplied key"

// Messages of error answers. Unauthorized answers share one text so that an
// outsider learns nothing from them.
const (
	msgUnauthorized = "Unauthorized"
	msgNotFound     = "Operation not found"
	msgInternal     = "Internal error; try again later"
	msgUnavailable  = "Service unavailable; try again later"
)

// formatTime writes a time as RFC 3339 UTC with 7 fractional digits, as DPS does.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.0000000Z")
}

// ErrorResponse builds an answer in the DPS error shape for errorCode (its
// HTTP status is errorCode / 1000), stamped with the service's clock; see
// NewErrorResponse.
func (s *Service) ErrorResponse(errorCode int, message, trackingID string, retryAfter time.Duration) Response {
	return NewErrorResponse(errorCode, message, trackingID, retryAfter, s.cfg.Now())
}

// NewErrorResponse builds an answer in the DPS error shape for errorCode
// (its HTTP status is errorCode / 1000) at time now. retryAfter < 0 omits
// retry-after; use it for 429 and 5xx answers only. An empty trackingID
// gets a fresh one. The MQTT hooks use it for their own refusals
// (throttling, malformed requests) so that every error has one shape.
func NewErrorResponse(errorCode int, message, trackingID string, retryAfter time.Duration, now time.Time) Response {
	if trackingID == "" {
		trackingID = trackid.New()
	}
	return Response{
		Status:     errorCode / 1000,
		RetryAfter: retryAfter,
		Body: &ErrorBody{
			ErrorCode:    errorCode,
			TrackingID:   trackingID,
			Message:      message,
			TimestampUTC: formatTime(now),
		},
	}
}

// newOperationID returns an unguessable operation id: "4." + 32 hex digits
// (128 random bits), URL- and topic-safe.
func newOperationID(r io.Reader) (string, error) {
	if r == nil {
		r = rand.Reader
	}
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("operation id randomness: %w", err)
	}
	return operationIDPrefix + hex.EncodeToString(b[:]), nil
}

// operationIDPrefix starts every operation id this service issues.
const operationIDPrefix = "4."

// isOperationID reports whether s has the form newOperationID writes; other
// strings are answered 404 without touching the store.
func isOperationID(s string) bool {
	if len(s) != len(operationIDPrefix)+32 || s[:len(operationIDPrefix)] != operationIDPrefix {
		return false
	}
	for _, c := range []byte(s[len(operationIDPrefix):]) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// EncodeBody writes a response body as pure-ASCII JSON: every non-ASCII
// character is escaped as \uXXXX (a surrogate pair above the BMP), because the
// Node SDK decodes answers as ASCII. Invalid UTF-8 becomes \ufffd.
func EncodeBody(body any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(body); err != nil {
		return nil, fmt.Errorf("encode response body: %w", err)
	}
	raw := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	return asciiJSON(raw), nil
}

// asciiJSON escapes every non-ASCII rune of JSON text. Outside strings JSON
// text is ASCII, so every such rune is inside a string, where \uXXXX means
// the same character.
func asciiJSON(in []byte) []byte {
	ascii := true
	for _, c := range in {
		if c >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return in
	}
	const hexDigits = "0123456789abcdef"
	out := make([]byte, 0, len(in)+len(in)/2)
	esc := func(u uint16) {
		out = append(out, '\\', 'u', hexDigits[u>>12], hexDigits[u>>8&0xf], hexDigits[u>>4&0xf], hexDigits[u&0xf])
	}
	for i := 0; i < len(in); {
		c := in[i]
		if c < utf8.RuneSelf {
			out = append(out, c)
			i++
			continue
		}
		r, size := utf8.DecodeRune(in[i:])
		i += size
		if r > 0xffff {
			r1, r2 := utf16.EncodeRune(r)
			esc(uint16(r1))
			esc(uint16(r2))
			continue
		}
		esc(uint16(r)) // includes utf8.RuneError for invalid bytes
	}
	return out
}
