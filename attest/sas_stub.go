package attest

// This file fixes the exported SAS/username API that other packages build
// against while the implementation lands. Replaced by its implementation files.

import (
	"errors"
	"time"
)

var errNotImplementedSAS = errors.New("attest: not implemented yet")

// SASToken is a parsed SharedAccessSignature.
type SASToken struct {
	Resource  string    // sr exactly as received (still URL-encoded)
	Signature []byte    // decoded sig
	Expiry    time.Time // se
	KeyName   string    // skn, "" when absent
}

// SASPolicy bounds token lifetimes during verification.
type SASPolicy struct {
	ClockSkew   time.Duration
	MaxLifetime time.Duration
}

// ParseSASToken parses "SharedAccessSignature sr=..&sig=..&se=..[&skn=..]".
func ParseSASToken(s string) (*SASToken, error) { return nil, errNotImplementedSAS }

// Verify checks the signature with key, the resource and the expiry.
func (t *SASToken) Verify(key []byte, expectedResource string, now time.Time, policy SASPolicy) error {
	return errNotImplementedSAS
}

// SignSAS builds a token for resource signed with key.
func SignSAS(key []byte, resource string, expiry time.Time, keyName string) string { return "" }

// DeriveDeviceKey derives a device key from an enrollment group key.
func DeriveDeviceKey(groupKey []byte, registrationID string) []byte { return nil }

// Username is a parsed DPS MQTT CONNECT username.
type Username struct {
	IDScope        string
	RegistrationID string
	APIVersion     string
	ClientVersion  string
}

// ParseUsername parses "{idScope}/registrations/{registrationId}/api-version={v}[&k=v...]".
func ParseUsername(s string) (Username, error) { return Username{}, errNotImplementedSAS }

// ValidateRegistrationID checks the DPS registration id rules.
func ValidateRegistrationID(id string) error { return errNotImplementedSAS }
