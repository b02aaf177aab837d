package provision

import "errors"

// Errors returned by Authenticate and ParseRegisterRequest. Test them with
// errors.Is; the wrapped text is a reason for logs, never for the device.
var (
	// ErrNotAuthorized: the credentials do not authenticate this client
	// (CONNACK "not authorized"). The reason it wraps may name the cause but is
	// only for logs: a device is never told which ids exist.
	ErrNotAuthorized = errors.New("provision: not authorized")
	// ErrUnsupported: the client asked for something this service does not do
	// (CONNACK "not authorized" as well). Nothing in this package returns it
	// today; a refusal of this kind would carry the label AuthFailureUnsupported.
	ErrUnsupported = errors.New("provision: unsupported")
	// ErrUnavailable: the service could not decide because its store failed
	// (CONNACK "server unavailable"); the device may retry later.
	ErrUnavailable = errors.New("provision: service unavailable")
	// ErrBadRequest: a request body is malformed or too large (a 400 answer).
	ErrBadRequest = errors.New("provision: bad request")
)

// DPS error codes (errorCode / 1000 is the HTTP status of the answer).
const (
	// ErrorCodeBadRequest: the body is not valid (cannot be parsed or validated).
	ErrorCodeBadRequest = 400004
	// ErrorCodeUnauthorized: not authorized, or the TPM challenge (DPS uses it for both).
	ErrorCodeUnauthorized = 401002
	// ErrorCodeNotFound: the operation (or other resource) does not exist.
	ErrorCodeNotFound = 404001
	// ErrorCodeThrottled: too many requests; retry after retry-after.
	ErrorCodeThrottled = 429001
	// ErrorCodeInternal: an internal error; retry later.
	ErrorCodeInternal = 500001
	// ErrorCodeUnavailable: the store the service shares with the other
	// nodes of its cluster cannot answer now; retry later.
	ErrorCodeUnavailable = 503001
)

// Error codes of a failed registration (registrationState.errorCode). They are
// permanent until the enrollment or the service configuration changes.
const (
	// ErrorCodeNoHub: no IoT hub is configured for the device's allocation.
	ErrorCodeNoHub = 400208
	// ErrorCodeCustomAllocation: custom (webhook) allocation is not supported
	// (DPS reports custom allocation failures with this code).
	ErrorCodeCustomAllocation = 400209
	// ErrorCodeAllocationPolicy: the enrollment names an unknown allocation policy.
	ErrorCodeAllocationPolicy = 400210
)
