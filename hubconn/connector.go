package hubconn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Authentication types of a hub device identity.
const (
	AuthSAS                  = "sas"
	AuthSelfSigned           = "selfSigned"
	AuthCertificateAuthority = "certificateAuthority"
)

// Device is what a hub is told about a device.
type Device struct {
	// DeviceID is the device's id in the hub.
	DeviceID string
	// RegistrationID, AttestationType and EnrollmentGroupID describe the
	// registration (the webhook connector sends them; IoT Hub has no field
	// for them).
	RegistrationID    string
	AttestationType   string
	EnrollmentGroupID string
	// Auth is the credential the device will use at the hub.
	Auth Auth
	// IoTEdge marks an IoT Edge device.
	IoTEdge bool
}

// Auth is a device's credential at its hub: symmetric keys (sas), the
// thumbprints of its certificates (selfSigned), or a chain to a CA the hub
// knows (certificateAuthority).
type Auth struct {
	Type string
	// PrimaryKey and SecondaryKey are base64 keys (sas). Secrets.
	PrimaryKey, SecondaryKey string
	// PrimaryThumbprint and SecondaryThumbprint are hex SHA-256 (or SHA-1)
	// thumbprints of the device's certificates (selfSigned).
	PrimaryThumbprint, SecondaryThumbprint string
}

// Twin is the part of a device twin the service writes and migrates: tags
// and desired properties, each a JSON object (nil: empty).
type Twin struct {
	Tags    json.RawMessage `json:"tags,omitempty"`
	Desired json.RawMessage `json:"desired,omitempty"`
}

// Connector makes devices known to one hub. Implementations are safe for
// concurrent use; every method is one attempt and returns an *Error (or
// ErrNotFound) on failure.
type Connector interface {
	// Register creates d's identity in the hub, or updates the identity of
	// d.DeviceID to d: a retry after any failure, or after a crash, never
	// creates a second identity. When twin is not nil the twin's tags and
	// desired properties are replaced by it.
	Register(ctx context.Context, d *Device, twin *Twin) error
	// Twin returns the tags and desired properties of a device's twin, or
	// ErrNotFound. A connector that cannot read twins returns
	// ErrUnsupported.
	Twin(ctx context.Context, deviceID string) (*Twin, error)
	// Remove deletes a device's identity from the hub (it moved away); a
	// device that does not exist there is not an error.
	Remove(ctx context.Context, deviceID string) error
}

// Errors of a Connector besides *Error.
var (
	// ErrNotFound: the device does not exist in the hub.
	ErrNotFound = errors.New("hubconn: device not found")
	// ErrUnsupported: the connector cannot do this (a webhook reads no twin).
	ErrUnsupported = errors.New("hubconn: not supported by this connector")
)

// Error is a failed call to a hub.
type Error struct {
	// Hub names the hub (its host name).
	Hub string
	// Op is what was attempted: "create device", "read twin", ...
	Op string
	// Status is the hub's HTTP status (0 when it did not answer).
	Status int
	// Code is the hub's error code name, when it sent one
	// (DeviceNotFound, ThrottlingException, ...).
	Code string
	// Retryable reports a failure worth another attempt: no answer, 429,
	// or a 5xx status.
	Retryable bool
	// RetryAfter is the hub's Retry-After, when it sent one.
	RetryAfter time.Duration
	// Message is the hub's message or the transport's error; it never
	// holds a key or token.
	Message string
}

// Error describes the failure.
func (e *Error) Error() string {
	switch {
	case e.Status == 0:
		return fmt.Sprintf("hub %s: %s: %s", e.Hub, e.Op, e.Message)
	case e.Code != "":
		return fmt.Sprintf("hub %s: %s: %d %s: %s", e.Hub, e.Op, e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("hub %s: %s: %d: %s", e.Hub, e.Op, e.Status, e.Message)
}

// retryableStatus reports the statuses worth another attempt.
func retryableStatus(status int) bool {
	return status == 429 || status == 408 || status >= 500
}

// Options configure the requests of a connector (IoT Hub or webhook). Zero
// fields take defaults.
type Options struct {
	// Client makes the requests (its transport holds the TLS roots and any
	// client certificate); nil: a client with the default transport.
	Client *http.Client
	// UserAgent is sent with each request (default "dpsd").
	UserAgent string
	// RequestTimeout bounds one request (default DefaultRequestTimeout).
	RequestTimeout time.Duration
	// Now is the clock of SAS tokens and signatures (default time.Now).
	Now func() time.Time
}

// withDefaults returns o with its zero fields set to their defaults.
func (o Options) withDefaults() Options {
	if o.Client == nil {
		o.Client = &http.Client{}
	}
	if o.UserAgent == "" {
		o.UserAgent = "dpsd"
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}
