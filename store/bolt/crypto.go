package bolt

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/tpmdps/dpsd/store/internal/seal"
)

// DataKeySize is the size of the data key file: an AES-256 key.
const DataKeySize = seal.KeySize

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

// newSealer returns the sealing of secrets under key (store/internal/seal,
// shared with the etcd engine).
func newSealer(key []byte) (*seal.Sealer, error) {
	sl, err := seal.New(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyFile, err)
	}
	return sl, nil
}

// seal encrypts plaintext for the record (bucket, key): nonce || ciphertext || tag.
func (s *Store) seal(bucket, key, plaintext []byte) []byte {
	return s.sealer.Seal(bucket, key, plaintext)
}

// open decrypts a sealed value of the record (bucket, key).
func (s *Store) open(bucket, key, sealed []byte) ([]byte, error) {
	return s.sealer.Open(bucket, key, sealed)
}

// newETag returns a fresh opaque etag: 96 random bits, base64url.
func newETag() string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("store: crypto/rand failed: %v", err))
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}
