package provision

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"log/slog"
	"strings"

	"github.com/tpmdps/dpsd/attest"
)

// AuthMethod is how a connection authenticated.
type AuthMethod int

// Authentication methods, weakest first (a takeover needs at least as strong).
const (
	AuthRestricted   AuthMethod = iota // no credential: may only ask for a TPM challenge
	AuthTPM                            // SAS signed with a TPM challenge key
	AuthSymmetricKey                   // SAS signed with an enrollment or group-derived key
	AuthX509                           // TLS client certificate
)

// String names the method for logs.
func (m AuthMethod) String() string {
	switch m {
	case AuthRestricted:
		return "restricted"
	case AuthTPM:
		return "tpm"
	case AuthSymmetricKey:
		return "symmetricKey"
	case AuthX509:
		return "x509"
	}
	return fmt.Sprintf("AuthMethod(%d)", int(m))
}

// Identity is the outcome of authenticating a connection, kept for its lifetime.
type Identity struct {
	RegistrationID string // lowercased
	Method         AuthMethod
	GroupID        string            // enrollment group that matched, if any
	ChallengeRef   string            // TPM: the challenge reference that authenticated
	Certificate    *x509.Certificate // X.509: the device (leaf) certificate
	// SigningCertificate is, for X.509 through an enrollment group, the
	// group's signing (CA) certificate the chain verified to.
	SigningCertificate *x509.Certificate
	// keyHash is, for a symmetric key, the attestation hash of the key that
	// verified the SAS (attesthash.go); zero when unknown.
	keyHash [sha256.Size]byte
	// spelledID is the registration id as the device wrote it: a device
	// key derived from a group key is derived from it ("" when unknown:
	// RegistrationID is used).
	spelledID string
}

// Connect describes a CONNECT for authentication.
type Connect struct {
	ClientID   string
	Username   string
	Password   []byte // SAS token; nil or empty when absent
	PeerChain  []*x509.Certificate
	RemoteAddr string
	TrackingID string
}

// Authenticate decides what a CONNECT may do (docs/protocol.md section 2). A nil
// error with Method AuthRestricted means a restricted session (no
// credential). Errors wrap ErrNotAuthorized or ErrUnavailable (store
// failure); each means a CONNACK refusal, and the reason they carry is for
// logs only. A password is always a SAS token, even on a connection that
// also presents a client certificate; X.509 (x509.go) needs no password.
// The method's own checks are in tpm.go, symmetric.go and x509.go; every
// refusal is logged and observed once, here (refusal.go).
//
// A TPM challenge authenticates once: the cheap checks (format, expiry,
// signature) come first and the durable "used" mark last.
func (s *Service) Authenticate(ctx context.Context, c Connect) (Identity, error) {
	id, err := s.authenticate(ctx, c)
	if err != nil {
		return Identity{}, s.refuseConnect(ctx, c, err)
	}
	if id.Method == AuthRestricted {
		s.log.LogAttrs(ctx, slog.LevelDebug, "restricted session",
			slog.String("trackingId", c.TrackingID), slog.String("registrationId", id.RegistrationID))
		return id, nil
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "authenticated",
		slog.String("trackingId", c.TrackingID), slog.String("registrationId", id.RegistrationID),
		slog.String("method", id.Method.String()), slog.String("groupId", id.GroupID))
	return id, nil
}

// authenticate checks the username and hands the CONNECT to its method.
func (s *Service) authenticate(ctx context.Context, c Connect) (Identity, error) {
	u, err := attest.ParseUsername(c.Username)
	if err != nil {
		return Identity{}, badConnect(AuthFailureBadUsername, "bad username: %w", err)
	}
	if err := attest.ValidateRegistrationID(u.RegistrationID); err != nil {
		return Identity{}, badConnect(AuthFailureBadRegistrationID, "bad registration id: %w", err)
	}
	if !strings.EqualFold(c.ClientID, u.RegistrationID) {
		return Identity{}, badConnect(AuthFailureClientIDMismatch, "client id does not match the username's registration id")
	}
	if !strings.EqualFold(u.IDScope, s.cfg.IDScope) {
		return Identity{}, badConnect(AuthFailureUnknownIDScope, "unknown id scope %q", u.IDScope)
	}
	regID := strings.ToLower(u.RegistrationID)
	var id Identity
	switch {
	case len(c.Password) > 0:
		id, err = s.authSAS(ctx, c.Password, u.RegistrationID)
	case len(c.PeerChain) > 0:
		id, err = s.authX509(ctx, c.PeerChain, regID)
	default:
		id = Identity{RegistrationID: regID, Method: AuthRestricted}
	}
	id.spelledID = u.RegistrationID
	return id, err
}

// authSAS verifies a SAS token password, signed either with a TPM challenge
// key (skn is a challenge reference) or with a symmetric key.
// spelledID is the registration id exactly as the device wrote it.
func (s *Service) authSAS(ctx context.Context, password []byte, spelledID string) (Identity, error) {
	tok, err := attest.ParseSASToken(string(password))
	if err != nil {
		return Identity{}, badConnect(AuthFailureBadToken, "bad SAS token: %w", err)
	}
	resource := s.cfg.IDScope + "/registrations/" + spelledID
	switch {
	case isChallengeRef(tok.KeyName):
		return s.authTPM(ctx, tok, resource, strings.ToLower(spelledID))
	case tok.KeyName != "" && tok.KeyName != SymmetricKeyName:
		// docs/protocol.md section 6: skn is absent or "registration" for symmetric keys.
		return Identity{}, badConnect(AuthFailureBadToken, "bad SAS token: skn is neither %q nor a TPM challenge reference", SymmetricKeyName)
	}
	return s.authSymmetric(ctx, tok, resource, spelledID)
}
