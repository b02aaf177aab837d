package device

import (
	"context"
	"crypto/tls"
	"time"
)

// Attestation is how a device proves its identity: the seam between the DPS
// client and a TPM, a symmetric key or an X.509 certificate. Only
// Credentials is required; an implementation adds the optional interfaces
// below (IDProvider, RegisterFielder, Challenger, Finisher) for the steps it
// takes part in. A symmetric-key attestation is just Credentials returning a
// SAS token (see SymmetricKey).
//
// Provision calls an Attestation from one goroutine at a time; an
// implementation shared by concurrent Provision calls must be safe for that.
type Attestation interface {
	// Credentials returns what the next CONNECT carries: a SAS token as
	// password and/or a TLS client certificate. The zero Credentials means
	// an unauthenticated connection (a TPM device asking for a challenge).
	Credentials(ctx context.Context, s Session) (Credentials, error)
}

// IDProvider is an Attestation that can name the device when
// Config.RegistrationID is empty (a TPM derives it from its EK).
type IDProvider interface {
	DefaultRegistrationID(ctx context.Context) (string, error)
}

// RegisterFielder is an Attestation that adds top-level fields to the
// register body (a TPM adds "tpm": {endorsementKey, storageRootKey}). It is
// called for every register request. Values are marshalled with encoding/json.
type RegisterFielder interface {
	RegisterFields(ctx context.Context, s Session) (map[string]any, error)
}

// Challenger is an Attestation that answers a 401 register answer carrying
// an authenticationKey (the TPM challenge, docs/protocol.md section 5). It opens
// the challenge and returns the credentials for the reconnect.
type Challenger interface {
	Challenge(ctx context.Context, s Session, c Challenge) (Credentials, error)
}

// Finisher is an Attestation that processes an assigned registration before
// Provision returns (a TPM imports the hub key from registrationState.tpm).
// It may set fields of res (HubKey).
type Finisher interface {
	Finish(ctx context.Context, s Session, res *Result) error
}

// Credentials is what one CONNECT carries.
type Credentials struct {
	// Password is the SAS token sent as the MQTT password; "" for none.
	// It is a secret: never logged.
	Password string
	// Certificate is the TLS client certificate (X.509 attestation); nil for none.
	Certificate *tls.Certificate
}

// Session describes the provisioning an Attestation is asked about.
type Session struct {
	// IDScope is the provisioning service's scope.
	IDScope string
	// RegistrationID is the device's registration id.
	RegistrationID string
	// Resource is the SAS resource: "{idScope}/registrations/{registrationId}".
	Resource string
	// Now is the current time by the Config's clock, for token expiries.
	Now time.Time
}

// Challenge is a TPM challenge from a 401 register answer.
type Challenge struct {
	// AuthenticationKey is the decoded activation blob.
	AuthenticationKey []byte
	// KeyName is the reference to sign with (the SAS token's skn).
	KeyName string
}
