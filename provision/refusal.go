package provision

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// A refusal is the service saying no. It is built where the decision is
// made and carries both halves of it: what the device is told (a DPS status
// and error code with a public message, or for a CONNECT the sentinel error
// that picks the CONNACK code) and, apart from that, the reason, which only
// the log sees. Refusals travel up as errors (errors.As finds them) and are
// rendered in one place: a request refusal becomes its error answer and one
// log line (Service.refused), a CONNECT refusal one log line, one
// observation and the error Authenticate returns (Service.refuseConnect).
//
// A reason never holds a key, token, blob or payload: only what the device
// sent wrong in words, stored state the operator may read, and errors of
// the store.
type refusal struct {
	status int    // DPS (HTTP) status: errorCode / 1000; for a CONNECT 401 or 503
	code   int    // DPS error code of the answer (ErrorCode*); 0 for a CONNECT
	public string // message of the answer; "" for a CONNECT (a CONNACK has none)
	reason error  // why, for the log only
	// CONNECT refusals only:
	kind  error  // ErrNotAuthorized or ErrUnavailable, for callers' errors.Is
	label string // AuthFailure* label given to Observer.AuthFailed
}

// Error is the log reason behind the kind (for a CONNECT: "provision: not
// authorized: bad username: ...") or the status and code.
func (r *refusal) Error() string {
	if r.kind != nil {
		return r.kind.Error() + ": " + r.reason.Error()
	}
	return fmt.Sprintf("provision: refused %d %d: %v", r.status, r.code, r.reason)
}

// Unwrap lets errors.Is find the kind and anything the reason wraps.
func (r *refusal) Unwrap() []error {
	if r.kind != nil {
		return []error{r.kind, r.reason}
	}
	return []error{r.reason}
}

// Request refusals (Register, Poll).

// unauthorized: 401 401002 with the one shared message, whatever the
// reason (an unknown id, another attestation type, an EK mismatch), so that
// an outsider learns nothing from it.
func unauthorized(reason string) *refusal {
	return &refusal{status: 401, code: ErrorCodeUnauthorized, public: msgUnauthorized, reason: errors.New(reason)}
}

// badRequest: 400 400004. reason names only what the device sent wrong,
// never stored state: it is also the answer's message.
func badRequest(reason string) *refusal {
	return &refusal{status: 400, code: ErrorCodeBadRequest, public: "Bad request: " + reason, reason: errors.New(reason)}
}

// notFound: 404 404001 with the one shared message, for unknown operations
// and other devices' alike.
func notFound(reason string) *refusal {
	return &refusal{status: 404, code: ErrorCodeNotFound, public: msgNotFound, reason: errors.New(reason)}
}

// throttled: 429 429001, retried by devices after retry-after: the
// service cannot take the request now (the outbox is full).
func throttled(public, reason string) *refusal {
	return &refusal{status: 429, code: ErrorCodeThrottled, public: public, reason: errors.New(reason)}
}

// internalError: 500 500001 with a generic message; err (a store failure,
// randomness) goes to the log only. Any error that is not a refusal is
// answered as one.
func internalError(err error) *refusal {
	if errors.Is(err, store.ErrUnavailable) {
		// The shared store (etcd) cannot answer now: 503, which devices
		// retry, and nothing decided.
		return &refusal{status: 503, code: ErrorCodeUnavailable, public: msgUnavailable, reason: err}
	}
	return &refusal{status: 500, code: ErrorCodeInternal, public: msgInternal, reason: err}
}

// CONNECT refusals (Authenticate).

// badConnect refuses a CONNECT for what it shows by itself (a malformed
// username or token, another ID scope, an expired challenge), labelled for
// the observer with one of the AuthFailure constants that name such input.
func badConnect(label, format string, args ...any) *refusal {
	return &refusal{status: 401, kind: ErrNotAuthorized, label: label, reason: fmt.Errorf(format, args...)}
}

// notAuthorized refuses a CONNECT for a reason that depends on stored state
// or a secret: every such refusal has the one label AuthFailureNotAuthorized,
// so that metrics cannot tell enrolled ids from unknown ones.
func notAuthorized(format string, args ...any) *refusal {
	return &refusal{status: 401, kind: ErrNotAuthorized, label: AuthFailureNotAuthorized, reason: fmt.Errorf(format, args...)}
}

// unavailable refuses a CONNECT the service cannot decide (the store
// failed, too many used challenges are remembered): the device may retry.
// Any error of Authenticate that is not a refusal is one.
func unavailable(format string, args ...any) *refusal {
	return &refusal{status: 503, kind: ErrUnavailable, label: AuthFailureUnavailable, reason: fmt.Errorf(format, args...)}
}

// refused renders the refusal err of a request: one log line with the
// trackingId, the registrationId and the reason, and the DPS error answer.
// An err that is no refusal is an internal error.
func (s *Service) refused(ctx context.Context, trackingID string, id Identity, err error) Response {
	var r *refusal
	if !errors.As(err, &r) {
		r = internalError(err)
	}
	level, msg, key, retryAfter := slog.LevelInfo, "request refused", "reason", time.Duration(-1)
	switch {
	case r.status >= 500:
		level, msg, key, retryAfter = slog.LevelError, "internal error", "error", s.retryAfterError()
	case r.status == 429:
		level, msg, retryAfter = slog.LevelWarn, "request throttled", s.cfg.Handoff.RetryAfter
	case r.status == 400:
		msg = "bad request"
	case r.status == 404:
		msg = "poll refused"
	}
	s.log.LogAttrs(ctx, level, msg,
		slog.String("trackingId", trackingID), slog.String("registrationId", id.RegistrationID),
		slog.String(key, r.reason.Error()))
	return s.ErrorResponse(r.code, r.public, trackingID, retryAfter)
}

// refuseConnect renders the refusal err of a CONNECT: one log line with the
// trackingId, clientId, remote address and reason, one observation, and the
// error Authenticate returns (wrapping ErrNotAuthorized or ErrUnavailable).
// An err that is no refusal means the service could not decide: unavailable.
func (s *Service) refuseConnect(ctx context.Context, c Connect, err error) error {
	var r *refusal
	if !errors.As(err, &r) {
		r = unavailable("%w", err)
	}
	if s.cfg.Observer != nil {
		s.cfg.Observer.AuthFailed(ctx, r.label)
	}
	level := slog.LevelInfo
	if r.kind == ErrUnavailable {
		level = slog.LevelError
	}
	s.log.LogAttrs(ctx, level, "connect refused",
		slog.String("trackingId", c.TrackingID), slog.String("clientId", c.ClientID),
		slog.String("remoteAddr", c.RemoteAddr), slog.String("reason", r.reason.Error()))
	return r
}

// retryAfterError is the retry-after of a 5xx: at least one second.
func (s *Service) retryAfterError() time.Duration {
	if s.retryAfter < time.Second {
		return time.Second
	}
	return s.retryAfter
}
