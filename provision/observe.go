package provision

import (
	"context"
	"log/slog"
	"time"
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
	// EKCertificateChecked reports the check of an EK certificate a device
	// sent with a TPM challenge request. outcome is one of the EKCert*
	// constants.
	EKCertificateChecked(ctx context.Context, outcome string)
}

// HandoffObserver is implemented by an Observer that also wants the
// outbox's outside calls (handoff.go): each custom allocation webhook call
// (step "webhook") and each registration of a device in its hub (step
// "hub"), with its outcome ("ok", "retry": a failure worth another
// attempt, "failed") and how long it took.
type HandoffObserver interface {
	HandoffCall(ctx context.Context, step, outcome string, elapsed time.Duration)
}

// Steps and outcomes of HandoffObserver.HandoffCall.
const (
	HandoffStepWebhook = "webhook"
	HandoffStepHub     = "hub"
	HandoffOK          = "ok"
	HandoffRetry       = "retry"
	HandoffFailed      = "failed"
)

// observeHandoff tells a HandoffObserver about one outside call.
func (s *Service) observeHandoff(ctx context.Context, step string, o outcome, elapsed time.Duration) {
	ho, ok := s.cfg.Observer.(HandoffObserver)
	if !ok {
		return
	}
	outcome := HandoffOK
	switch {
	case o.fail:
		outcome = HandoffFailed
	case o.retry:
		outcome = HandoffRetry
	}
	ho.HandoffCall(ctx, step, outcome, elapsed)
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
	// CertificateSerial and CertificateThumbprint identify the operational
	// certificate issued with this registration (upper-case hex serial
	// number, SHA-256 thumbprint); "" when none was.
	CertificateSerial     string
	CertificateThumbprint string
}

// Reasons of AuthFailed: every CONNECT refusal carries one (refusal.go:
// badConnect, notAuthorized, unavailable). A label may tell only what the
// CONNECT itself shows: the malformed-input labels below are decided from
// the CONNECT's own bytes before any enrollment, group or key is consulted. Every refusal
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

// Outcomes of EKCertificateChecked. The check of an EK certificate depends
// only on what the device sent and on the service's configuration (the
// service's TPM roots and the roots of every TPM group together), never on
// the registration id or its enrollment, and it runs before the id is
// looked up: so /metrics, which anyone who reaches the API port may read,
// cannot tell enrolled ids from unknown ones by these counts. Which
// enrollment or group then admits the device is in the log only.
const (
	// EKCertValid: the certificate is for the EK sent and chains to a
	// configured root.
	EKCertValid = "valid"
	// EKCertMalformed: not base64, not a certificate, or not an EK certificate.
	EKCertMalformed = "malformed"
	// EKCertKeyMismatch: a certificate for another key than the EK sent.
	EKCertKeyMismatch = "key_mismatch"
	// EKCertUntrusted: no chain to a configured root.
	EKCertUntrusted = "untrusted"
	// EKCertExpired: the certificate or its chain is outside its validity.
	EKCertExpired = "expired"
	// EKCertRevoked: on a configured revocation list.
	EKCertRevoked = "revoked"
)

// observeChallenge tells the observer about an issued TPM challenge.
func (s *Service) observeChallenge(ctx context.Context, registrationID string) {
	if s.cfg.Observer != nil {
		s.cfg.Observer.ChallengeIssued(ctx, registrationID)
	}
}

// observeEKCert tells the observer the outcome of an EK certificate check.
func (s *Service) observeEKCert(ctx context.Context, outcome string) {
	if s.cfg.Observer != nil {
		s.cfg.Observer.EKCertificateChecked(ctx, outcome)
	}
}

// recorded writes the audit line of a recorded registration outcome (who:
// the registration id and how it attested; what: the status and hub; when)
// and tells the observer; an issued certificate adds its serial number and
// SHA-256 thumbprint. It never logs keys, tokens or the payload.
func (s *Service) recorded(ctx context.Context, ev RegistrationEvent) {
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs,
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
	)
	if ev.CertificateSerial != "" {
		attrs = append(attrs, slog.String("certificateSerial", ev.CertificateSerial),
			slog.String("certificateSha256", ev.CertificateThumbprint))
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "registration", slog.GroupAttrs("audit", attrs...))
	if s.cfg.Observer != nil {
		s.cfg.Observer.Registered(ctx, ev)
	}
}
