package bolt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/tpmdps/dpsd/store"
)

// DataKeySize is the size of the data key file: an AES-256 key.
const DataKeySize = 32

// keyCheckLabel derives the value stored in the meta bucket that ties a key
// file to its database without revealing the key.
const keyCheckLabel = "dpsd store key check v1"

// sealPrefix starts the additional data of every ciphertext, so that the
// binding (bucket, key) cannot collide with another use of the key.
const sealPrefix = "dpsd/store/v1\x00"

// loadOrCreateKey reads the data key file. When it does not exist and the
// database has no key yet (mustExist false), a new random key is written with
// mode 0600. A key file with the wrong size or any group/other permission bit
// is refused.
func loadOrCreateKey(path string, mustExist bool) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if mustExist {
			return nil, fmt.Errorf("%w: %s does not exist but the database holds encrypted data; restore the key file that belongs to it", ErrKeyFile, path)
		}
		return createKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w", ErrKeyFile, path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: stat %s: %w", ErrKeyFile, path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrKeyFile, path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; it must not be accessible to group or others (chmod 600)", ErrKeyFile, path, perm)
	}
	if fi.Size() != DataKeySize {
		return nil, fmt.Errorf("%w: %s is %d bytes, want %d", ErrKeyFile, path, fi.Size(), DataKeySize)
	}
	key := make([]byte, DataKeySize)
	if _, err := io.ReadFull(f, key); err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrKeyFile, path, err)
	}
	return key, nil
}

// createKey writes a new random key to a temporary file (mode 0600, synced)
// and links it into place, so that a crash never leaves a partial key file
// and an existing key file is never replaced.
func createKey(path string) ([]byte, error) {
	key := make([]byte, DataKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("%w: generate key: %w", ErrKeyFile, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("%w: create %s: %w", ErrKeyFile, path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	cherr := f.Chmod(0o600)
	_, werr := f.Write(key)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(cherr, werr, serr, cerr); err != nil {
		return nil, fmt.Errorf("%w: write %s: %w", ErrKeyFile, tmp, err)
	}
	if err := os.Link(tmp, path); err != nil {
		return nil, fmt.Errorf("%w: create %s: %w", ErrKeyFile, path, err)
	}
	syncDir(filepath.Dir(path))
	return key, nil
}

// newAEAD returns AES-256-GCM under key.
func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyFile, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyFile, err)
	}
	return aead, nil
}

// keyCheck is HMAC-SHA256(key, label) truncated to 16 bytes: it identifies
// the key without revealing it.
func keyCheck(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(keyCheckLabel))
	return m.Sum(nil)[:16]
}

// equalCheck compares key check values in constant time.
func equalCheck(a, b []byte) bool { return hmac.Equal(a, b) }

// additionalData binds a ciphertext to the record that holds it.
func additionalData(bucket, key []byte) []byte {
	ad := make([]byte, 0, len(sealPrefix)+len(bucket)+1+len(key))
	ad = append(ad, sealPrefix...)
	ad = append(ad, bucket...)
	ad = append(ad, 0)
	ad = append(ad, key...)
	return ad
}

// seal encrypts plaintext for the record (bucket, key): nonce || ciphertext || tag.
func (s *Store) seal(bucket, key, plaintext []byte) []byte {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		panic(fmt.Sprintf("store: crypto/rand failed: %v", err)) // crypto/rand never fails on supported platforms
	}
	return s.aead.Seal(nonce, nonce, plaintext, additionalData(bucket, key))
}

// open decrypts a sealed value of the record (bucket, key).
func (s *Store) open(bucket, key, sealed []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(sealed) < ns+s.aead.Overhead() {
		return nil, fmt.Errorf("%w: %s/%q: sealed value too short", store.ErrCorrupt, bucket, key)
	}
	pt, err := s.aead.Open(nil, sealed[:ns], sealed[ns:], additionalData(bucket, key))
	if err != nil {
		return nil, fmt.Errorf("%w: %s/%q: secrets fail authentication (tampered, moved, or wrong key file)", store.ErrCorrupt, bucket, key)
	}
	return pt, nil
}

// newETag returns a fresh opaque etag: 96 random bits, base64url.
func newETag() string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("store: crypto/rand failed: %v", err))
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}
