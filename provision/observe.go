package provision

import (
	"context"
	"errors"
	"log/slog"
	"strings"
)

// Observer receives the service's countable events, for metrics. Every
// method must be quick and safe for concurrent use; none receives a key,
// token or blob. A nil Config.Observer turns observation off.
type Observer interface {
	// Registered reports a registration outcome recorded durably.
	Registered(ctx context.Context, ev RegistrationEvent)
	// ChallengeIssued reports a TPM challenge (a 401 with an activation blob) sent.
	ChallengeIssued(ctx context.Context, registrationID string)
	// AuthFailed reports a refused CONNECT. reason is one of the AuthFailure*
	// constants: a short, bounded label (never the device's input).
	AuthFailed(ctx context.Context, reason string)
}

// RegistrationEvent describes one recorded registration outcome. It is also
// the content of the audit log line written for it.
type RegistrationEvent struct {
	RegistrationID string
	// AttestationType is tpm, symmetricKey or x509 (store.Attestation*).
	AttestationType string
	// Method is how the connection authenticated (AuthMethod.String()).
	Method string
	// GroupID is the enrollment group that matched, if any.
	GroupID string
	// Status is assigned, failed or disabled (store.Registration*).
	Status      string
	AssignedHub string
	DeviceID    string
	// ErrorCode is the registration's error code when Status is failed.
	ErrorCode  int
	TrackingID string
}

// Reasons of AuthFailed. A label may tell only what the CONNECT itself
// shows: the malformed-input labels below are decided from the CONNECT's
// own bytes before any enrollment, group or key is consulted. Every refusal
// that depends on stored state or a secret (unknown id, wrong key or
// signature, another attestation type, a challenge already used, a
// certificate no enrollment or group accepts) is AuthFailureNotAuthorized,
// so that /metrics cannot tell an enrolled id from an unknown one; the
// detailed reason stays in the log line of the refusal.
const (
	AuthFailureBadUsername       = "bad_username"
	AuthFailureBadRegistrationID = "bad_registration_id"
	AuthFailureClientIDMismatch  = "client_id_mismatch"
	AuthFailureUnknownIDScope    = "unknown_id_scope"
	AuthFailureBadToken          = "bad_token"
	AuthFailureBadChallengeRef   = "bad_challenge_reference"
	AuthFailureChallengeExpired  = "challenge_expired"
	AuthFailureNotAuthorized     = "not_authorized"
	AuthFailureUnsupported       = "unsupported"
	AuthFailureUnavailable       = "store_unavailable"
)

// refuseReasons maps the start of a refusal's log format to its label: only
// refusals decided from the CONNECT alone (see the AuthFailure constants).
// A function, not a package variable: no package-level mutable state.
func refuseReasons() []struct{ prefix, reason string } {
	return []struct{ prefix, reason string }{
		{"bad username", AuthFailureBadUsername},
		{"bad registration id", AuthFailureBadRegistrationID},
		{"client id does not match", AuthFailureClientIDMismatch},
		{"unknown id scope", AuthFailureUnknownIDScope},
		{"bad SAS token", AuthFailureBadToken},
		{"bad challenge reference", AuthFailureBadChallengeRef},
		{"challenge expired", AuthFailureChallengeExpired},
	}
}

// refuseReason classifies a refusal by its (constant) log format and kind,
// so that metric labels stay few whatever the device sent.
func refuseReason(kind error, format string) string {
	if errors.Is(kind, ErrUnavailable) {
		return AuthFailureUnavailable
	}
	for _, r := range refuseReasons() {
		if strings.HasPrefix(format, r.prefix) {
			return r.reason
		}
	}
	if errors.Is(kind, ErrUnsupported) {
		return AuthFailureUnsupported
	}
	return AuthFailureNotAuthorized
}

// observeRefusal tells the observer about a refused CONNECT.
func (s *Service) observeRefusal(ctx context.Context, kind error, format string) {
	if s.cfg.Observer != nil {
		s.cfg.Observer.AuthFailed(ctx, refuseReason(kind, format))
	}
}

// observeChallenge tells the observer about an issued TPM challenge.
func (s *Service) observeChallenge(ctx context.Context, registrationID string) {
	if s.cfg.Observer != nil {
		s.cfg.Observer.ChallengeIssued(ctx, registrationID)
	}
}

// recorded writes the audit line of a recorded registration outcome (who:
// the registration id and how it attested; what: the status and hub; when)
// and tells the observer. It never logs keys, tokens or the payload.
func (s *Service) recorded(ctx context.Context, ev RegistrationEvent) {
	s.log.LogAttrs(ctx, slog.LevelInfo, "registration", slog.Group("audit",
		slog.String("who", ev.RegistrationID),
		slog.String("attestation", ev.AttestationType),
		slog.String("method", ev.Method),
		slog.String("groupId", ev.GroupID),
		slog.String("action", ev.Status),
		slog.String("assignedHub", ev.AssignedHub),
		slog.String("deviceId", ev.DeviceID),
		slog.Int("errorCode", ev.ErrorCode),
		slog.Time("at", s.cfg.Now().UTC()),
		slog.String("trackingId", ev.TrackingID),
	))
	if s.cfg.Observer != nil {
		s.cfg.Observer.Registered(ctx, ev)
	}
}
