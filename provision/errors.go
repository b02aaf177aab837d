package provision

import (
	"context"
	"errors"
	"log/slog"
	"time"
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
	// today; observers classify it as AuthFailureUnsupported.
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

// unauthorized answers 401 401002 with the one shared message; reason is logged only.
func (s *Service) unauthorized(ctx context.Context, trackingID string, id Identity, reason string) Response {
	s.log.LogAttrs(ctx, slog.LevelInfo, "request refused",
		slog.String("trackingId", trackingID), slog.String("registrationId", id.RegistrationID),
		slog.String("reason", reason))
	return s.ErrorResponse(ErrorCodeUnauthorized, msgUnauthorized, trackingID, -1)
}

// badRequest answers 400 400004 with reason as the message (it names only
// what the device sent wrong, never stored state).
func (s *Service) badRequest(ctx context.Context, trackingID string, id Identity, reason string) Response {
	s.log.LogAttrs(ctx, slog.LevelInfo, "bad request",
		slog.String("trackingId", trackingID), slog.String("registrationId", id.RegistrationID),
		slog.String("reason", reason))
	return s.ErrorResponse(ErrorCodeBadRequest, "Bad request: "+reason, trackingID, -1)
}

// internal answers 500 with a generic message and logs the details.
func (s *Service) internal(ctx context.Context, trackingID string, id Identity, err error) Response {
	s.log.LogAttrs(ctx, slog.LevelError, "internal error",
		slog.String("trackingId", trackingID), slog.String("registrationId", id.RegistrationID),
		slog.String("error", err.Error()))
	return s.ErrorResponse(ErrorCodeInternal, msgInternal, trackingID, s.retryAfterError())
}

// retryAfterError is the retry-after of a 5xx: at least one second.
func (s *Service) retryAfterError() time.Duration {
	if s.retryAfter < time.Second {
		return time.Second
	}
	return s.retryAfter
}

// notFound answers 404 in the DPS error shape; reason is logged only.
func (s *Service) notFound(ctx context.Context, trackingID string, id Identity, reason string) Response {
	s.log.LogAttrs(ctx, slog.LevelInfo, "poll refused",
		slog.String("trackingId", trackingID), slog.String("registrationId", id.RegistrationID),
		slog.String("reason", reason))
	return s.ErrorResponse(ErrorCodeNotFound, msgNotFound, trackingID, -1)
}
