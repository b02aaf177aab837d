// Package seal is the encryption at rest that every store engine shares:
// AES-256-GCM under the store's data key, each ciphertext bound to the
// record that holds it. The bbolt engine (a key file beside the database)
// and the etcd engine (the key from the cluster's shared secrets) seal the
// same way, so a sealed value is readable by either engine given the key.
//
// A sealed value is nonce(12) || ciphertext || tag. The GCM additional data
// is "dpsd/store/v1" 0x00 bucket 0x00 key, where bucket names the record kind
// ("enrollments", "groups", "registrations") and key is the record's key (the
// lowercased id), so a ciphertext copied to another record or kind fails to
// open (store.ErrCorrupt), as does any modified byte.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"

	"github.com/tpmdps/dpsd/store"
)

// KeySize is the size of a data key: AES-256.
const KeySize = 32

// keyCheckLabel derives the value an engine stores to tie a key to its data
// without revealing the key.
const keyCheckLabel = "dpsd store key check v1"

// sealPrefix starts the additional data of every ciphertext, so that the
// binding (bucket, key) cannot collide with another use of the key.
const sealPrefix = "dpsd/store/v1\x00"

// Sealer seals and opens the secrets of records under one data key. It is
// safe for concurrent use.
type Sealer struct {
	aead cipher.AEAD
}

// New returns a Sealer for key, which must be KeySize bytes.
func New(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("seal: key is %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// KeyCheck is HMAC-SHA256(key, label) truncated to 16 bytes: it identifies
// the key without revealing it, so that an engine refuses to open data with
// another key instead of failing record by record.
func KeyCheck(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(keyCheckLabel))
	return m.Sum(nil)[:16]
}

// EqualCheck compares key check values in constant time.
func EqualCheck(a, b []byte) bool { return hmac.Equal(a, b) }

// additionalData binds a ciphertext to the record that holds it.
func additionalData(bucket, key []byte) []byte {
	ad := make([]byte, 0, len(sealPrefix)+len(bucket)+1+len(key))
	ad = append(ad, sealPrefix...)
	ad = append(ad, bucket...)
	ad = append(ad, 0)
	ad = append(ad, key...)
	return ad
}

// Seal encrypts plaintext for the record (bucket, key): nonce || ciphertext || tag.
func (s *Sealer) Seal(bucket, key, plaintext []byte) []byte {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		panic(fmt.Sprintf("store: crypto/rand failed: %v", err)) // crypto/rand never fails on supported platforms
	}
	return s.aead.Seal(nonce, nonce, plaintext, additionalData(bucket, key))
}

// Open decrypts a sealed value of the record (bucket, key); a value that
// fails authentication is store.ErrCorrupt.
func (s *Sealer) Open(bucket, key, sealed []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(sealed) < ns+s.aead.Overhead() {
		return nil, fmt.Errorf("%w: %s/%q: sealed value too short", store.ErrCorrupt, bucket, key)
	}
	pt, err := s.aead.Open(nil, sealed[:ns], sealed[ns:], additionalData(bucket, key))
	if err != nil {
		return nil, fmt.Errorf("%w: %s/%q: secrets fail authentication (tampered, moved, or wrong key)", store.ErrCorrupt, bucket, key)
	}
	return pt, nil
}

// symmetricSecrets is the plaintext sealed for a symmetric-key attestation.
type symmetricSecrets struct {
	Primary   string `json:"p,omitempty"`
	Secondary string `json:"s,omitempty"`
}

// HasSymmetricSecrets reports whether a carries symmetric keys to seal.
func HasSymmetricSecrets(a store.Attestation) bool {
	return a.SymmetricKey != nil && (a.SymmetricKey.PrimaryKey != "" || a.SymmetricKey.SecondaryKey != "")
}

// SealAttestation seals the symmetric keys of a for the record (bucket,
// key) and returns a copy of a whose keys are blank (an empty symmetricKey
// object). No secrets: nil, a.
func (s *Sealer) SealAttestation(bucket, key []byte, a store.Attestation) ([]byte, store.Attestation, error) {
	if !HasSymmetricSecrets(a) {
		return nil, a, nil
	}
	pt, err := json.Marshal(symmetricSecrets{Primary: a.SymmetricKey.PrimaryKey, Secondary: a.SymmetricKey.SecondaryKey})
	if err != nil {
		return nil, a, err
	}
	a.SymmetricKey = &store.SymmetricKeyAttestation{}
	return s.Seal(bucket, key, pt), a, nil
}

// OpenAttestation restores the symmetric keys sealed for (bucket, key)
// into a; a nil sealed value leaves a as it is.
func (s *Sealer) OpenAttestation(bucket, key, sealed []byte, a *store.Attestation) error {
	if sealed == nil {
		return nil
	}
	pt, err := s.Open(bucket, key, sealed)
	if err != nil {
		return err
	}
	var sec symmetricSecrets
	if err := json.Unmarshal(pt, &sec); err != nil {
		return fmt.Errorf("%w: %s/%q: sealed keys: %w", store.ErrCorrupt, bucket, key, err)
	}
	a.SymmetricKey = &store.SymmetricKeyAttestation{PrimaryKey: sec.Primary, SecondaryKey: sec.Secondary}
	return nil
}
