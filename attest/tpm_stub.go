package attest

// This file fixes the exported TPM API that other packages build against while
// the implementation lands. Each stub is replaced by its implementation file.

import (
	"crypto"
	"errors"
	"io"
)

var errNotImplemented = errors.New("attest: not implemented yet")

// Public is a strictly parsed TPM2B_PUBLIC of an endorsement key or a storage
// root key (RSA-2048 or ECC NIST P-256).
type Public struct {
	raw  []byte
	name []byte
	key  crypto.PublicKey
}

// ParsePublic parses TPM2B_PUBLIC bytes (2-byte big-endian size, then
// TPMT_PUBLIC) strictly; see the implementation for the rules.
func ParsePublic(tpm2bPublic []byte) (*Public, error) { return nil, errNotImplemented }

// Bytes returns the TPM2B_PUBLIC bytes exactly as parsed.
func (p *Public) Bytes() []byte { return p.raw }

// Name returns the TPM Name: nameAlg (2 bytes) || H(TPMT_PUBLIC).
func (p *Public) Name() []byte { return p.name }

// PublicKey returns the *rsa.PublicKey or *ecdsa.PublicKey.
func (p *Public) PublicKey() crypto.PublicKey { return p.key }

// Equal reports whether two keys are the same public key, whatever their encoding.
func (p *Public) Equal(o *Public) bool { return false }

// RegistrationID returns the default DPS registration id of an EK.
func RegistrationID(ekTPM2BPublic []byte) string { return "" }

// NewActivationBlob builds the six-part activation blob carrying hmacKey.
func NewActivationBlob(rand io.Reader, ek, srk *Public, hmacKey []byte) ([]byte, error) {
	return nil, errNotImplemented
}
