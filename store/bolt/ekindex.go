package bolt

// The endorsement key index: bucket ekindex, key SHA-256(EK) ||
// record.Lower(registrationId) -> empty, one entry per TPM enrollment, written in
// the same transaction as the enrollment. It finds the enrollments of one
// TPM without reading every enrollment (EnrollmentIDsByEK).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
)

// ekHash is the index prefix of an endorsement key given as base64: the
// SHA-256 of the bytes it decodes to (standard encoding, as the API
// validates it), or of the text when it does not decode, so that one key
// spelt two ways is one key.
func ekHash(ek string) []byte {
	data := []byte(ek)
	if raw, err := base64.StdEncoding.DecodeString(ek); err == nil {
		data = raw
	}
	sum := sha256.Sum256(data)
	return sum[:]
}

// ekIndexKey is the index key of the enrollment key (lowercased id) with
// endorsement key ek.
func ekIndexKey(ek string, key []byte) []byte {
	return append(ekHash(ek), key...)
}

// enrollmentEK is the endorsement key a TPM enrollment's attestation
// names; "" for other attestation types.
func enrollmentEK(a *store.Attestation) string {
	if a.Type != store.AttestationTPM || a.TPM == nil {
		return ""
	}
	return a.TPM.EndorsementKey
}

// storedEK reads the endorsement key of a stored enrollment value; "" when
// v is nil or not a TPM enrollment.
func storedEK(key, v []byte) (string, error) {
	if v == nil {
		return "", nil
	}
	var rec struct {
		Attestation store.Attestation `json:"attestation"`
	}
	if err := json.Unmarshal(v, &rec); err != nil {
		return "", fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bktEnrollments, key, err)
	}
	return enrollmentEK(&rec.Attestation), nil
}

// reindexEK moves the index entry of the enrollment key from oldEK to
// newEK; either may be "" (no entry).
func reindexEK(tx *bbolt.Tx, key []byte, oldEK, newEK string) error {
	b := tx.Bucket([]byte(bktEKIndex))
	if oldEK != "" {
		if err := b.Delete(ekIndexKey(oldEK, key)); err != nil {
			return err
		}
	}
	if newEK != "" {
		return b.Put(ekIndexKey(newEK, key), []byte{})
	}
	return nil
}

// EnrollmentIDsByEK returns the lowercased registration ids, in order, of
// the TPM enrollments whose endorsement key decodes to the same bytes as
// ek: a prefix scan of the ekindex bucket, one read transaction.
func (s *Store) EnrollmentIDsByEK(ctx context.Context, ek string) ([]string, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: enrollments by endorsement key: %w", err)
	}
	defer done()
	if ek == "" {
		return nil, nil
	}
	prefix := ekHash(ek)
	var ids []string
	err = s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket([]byte(bktEKIndex)).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			ids = append(ids, string(k[len(prefix):]))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: enrollments by endorsement key: %w", err)
	}
	return ids, nil
}
