package provision

import (
	"errors"

	"github.com/tpmdps/dpsd/allocator"
)

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
// permanent until the enrollment, the hub or the service configuration changes.
const (
	// ErrorCodeNoHub: no IoT hub is configured for the device's allocation
	// (the code DPS gives a webhook's answer without a hub).
	ErrorCodeNoHub = 400208
	// ErrorCodeCustomAllocationFailed (CustomAllocationFailed): the custom
	// allocation webhook answered an error, an answer that is not an
	// AllocationResponse or a hub it was not offered, or could not be
	// reached until the service gave up (fallback policy refuse).
	ErrorCodeCustomAllocationFailed = allocator.ErrorCodeFailed
	// ErrorCodeCustomAllocationUnauthorized (CustomAllocationUnauthorizedAccess):
	// the webhook answered 401.
	ErrorCodeCustomAllocationUnauthorized = allocator.ErrorCodeUnauthorized
	// ErrorCodeAllocationPolicy: the enrollment names an unknown allocation policy.
	ErrorCodeAllocationPolicy = 400210
	// ErrorCodeHubRefused: the assigned hub refused the device's identity
	// (a 4xx answer other than 408 and 429: a wrong connection string, a
	// device id or credential the hub does not accept, its quota).
	ErrorCodeHubRefused = 400211
	// ErrorCodeHubUnavailable: the assigned hub (or the hub the device
	// leaves, whose data a migration reads) could not be reached, or kept
	// answering 429 or 5xx, until the hand-off timeout.
	ErrorCodeHubUnavailable = 503211
)
