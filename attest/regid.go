package attest

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// RegistrationID returns the default DPS registration id of a TPM device:
// lowercase unpadded base32 (RFC 4648 standard alphabet) of SHA-256 over the
// EK's full TPM2B_PUBLIC bytes, size prefix included (docs/protocol.md section 5).
// It hashes the bytes as given; parse them with ParsePublic first if they are
// untrusted.
func RegistrationID(ekTPM2BPublic []byte) string {
	sum := sha256.Sum256(ekTPM2BPublic)
	enc := base32.StdEncoding.WithPadding(base32.NoPadding)
	return strings.ToLower(enc.EncodeToString(sum[:]))
}
