package device

import (
	"context"
	"errors"
	"time"

	"github.com/tpmdps/dpsd/attest"
)

// SymmetricKey is symmetric-key attestation (protocol.md section 7): the
// CONNECT password is a SAS token signed with the device key. For an
// enrollment group, Key is attest.DeriveDeviceKey(groupKey, registrationID).
// It is the whole of what a non-TPM attestation needs to implement.
type SymmetricKey struct {
	// Key is the decoded device key (16-64 bytes). A secret.
	Key []byte
	// Lifetime is the token lifetime (default 1 hour).
	Lifetime time.Duration
}

// Credentials signs a SAS token over the registration resource with skn
// "registration", as the Azure SDKs do.
func (k *SymmetricKey) Credentials(_ context.Context, s Session) (Credentials, error) {
	if len(k.Key) == 0 {
		return Credentials{}, errors.New("device: symmetric key is empty")
	}
	life := k.Lifetime
	if life <= 0 {
		life = time.Hour
	}
	return Credentials{Password: attest.SignSAS(k.Key, s.Resource, s.Now.Add(life), "registration")}, nil
}
