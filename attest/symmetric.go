package attest

// Symmetric key attestation (docs/protocol.md section 7).

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Symmetric key length bounds, in bytes, as DPS enforces them on enrollment
// keys (it generates 64-byte keys itself).
const (
	// MinSymmetricKeyLen is the shortest key accepted: 128 bits.
	MinSymmetricKeyLen = 16
	// MaxSymmetricKeyLen is the longest key accepted: one SHA-256 block.
	MaxSymmetricKeyLen = 64
)

// ErrInvalidSymmetricKey means a symmetric key is not standard base64 of
// 16-64 bytes. It is wrapped with the reason (never the key); test with
// errors.Is.
var ErrInvalidSymmetricKey = errors.New("attest: invalid symmetric key")

// DecodeSymmetricKey decodes an enrollment key or group key as DPS stores
// it: canonical standard base64 with padding (no line breaks, unused
// trailing bits zero), 16-64 bytes once decoded. It is the one decoder of
// symmetric keys: the service API checks keys with it before storing them
// and the provisioning service decodes them with it, so a key the API
// accepts always works for a device.
func DecodeSymmetricKey(b64 string) ([]byte, error) {
	if len(b64) > base64.StdEncoding.EncodedLen(MaxSymmetricKeyLen) {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrInvalidSymmetricKey, MaxSymmetricKeyLen)
	}
	if strings.ContainsAny(b64, "\r\n") { // Go's decoders, even strict ones, skip them
		return nil, fmt.Errorf("%w: contains a line break", ErrInvalidSymmetricKey)
	}
	key, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("%w: not canonical standard padded base64", ErrInvalidSymmetricKey)
	}
	if len(key) < MinSymmetricKeyLen || len(key) > MaxSymmetricKeyLen {
		return nil, fmt.Errorf("%w: %d bytes, want %d-%d",
			ErrInvalidSymmetricKey, len(key), MinSymmetricKeyLen, MaxSymmetricKeyLen)
	}
	return key, nil
}

// DeriveDeviceKey derives the key of one device of an enrollment group:
// HMAC-SHA256(groupKey, registrationID), 32 raw bytes. The group key itself
// never signs a token.
//
// The registration id is used exactly as the device spells it, not
// normalized: a device registering as "Dev-01" signs with the key derived
// from "Dev-01", though its registration is stored as "dev-01". The broker
// must therefore derive from the id in the CONNECT username, not from the
// stored form.
func DeriveDeviceKey(groupKey []byte, registrationID string) []byte {
	m := hmac.New(sha256.New, groupKey)
	m.Write([]byte(registrationID))
	return m.Sum(nil)
}

// DeriveDeviceKeyBase64 is DeriveDeviceKey on base64 text, as the Azure
// tooling (az iot dps enrollment-group compute-device-key) takes and prints
// it: the group key is checked with DecodeSymmetricKey and the device key is
// returned as standard base64.
func DeriveDeviceKeyBase64(groupKeyB64, registrationID string) (string, error) {
	groupKey, err := DecodeSymmetricKey(groupKeyB64)
	if err != nil {
		return "", fmt.Errorf("group key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(DeriveDeviceKey(groupKey, registrationID)), nil
}
