package device

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tpmdps/dpsd/attest"
)

// SymmetricKey is symmetric-key attestation (docs/protocol.md section 7): the
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

// Symmetric key sizes the service accepts (docs/protocol.md section 7).
const (
	MinSymmetricKeySize = 16
	MaxSymmetricKeySize = 64
)

// NewSymmetricKey is symmetric-key attestation with an individual
// enrollment's primary or secondary key (decoded). Errors wrap ErrInvalidConfig.
func NewSymmetricKey(key []byte) (*SymmetricKey, error) {
	if len(key) < MinSymmetricKeySize || len(key) > MaxSymmetricKeySize {
		return nil, fmt.Errorf("%w: symmetric key of %d bytes, want %d-%d", ErrInvalidConfig, len(key), MinSymmetricKeySize, MaxSymmetricKeySize)
	}
	return &SymmetricKey{Key: append([]byte(nil), key...)}, nil
}

// NewGroupSymmetricKey is symmetric-key attestation through an enrollment
// group: the device key is attest.DeriveDeviceKey(groupKey, registrationID),
// derived over the registration id exactly as given (the same spelling as
// Config.RegistrationID: the service derives over the id the device sends).
// The group key itself is not kept. Errors wrap ErrInvalidConfig.
func NewGroupSymmetricKey(groupKey []byte, registrationID string) (*SymmetricKey, error) {
	if len(groupKey) < MinSymmetricKeySize || len(groupKey) > MaxSymmetricKeySize {
		return nil, fmt.Errorf("%w: group key of %d bytes, want %d-%d", ErrInvalidConfig, len(groupKey), MinSymmetricKeySize, MaxSymmetricKeySize)
	}
	if err := attest.ValidateRegistrationID(registrationID); err != nil {
		return nil, fmt.Errorf("%w: group key derivation: %w", ErrInvalidConfig, err)
	}
	return &SymmetricKey{Key: attest.DeriveDeviceKey(groupKey, registrationID)}, nil
}
