package bolt

// Individual enrollments: bucket enrollments, keyed by record.Lower(registrationId).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

// enrollmentRecord is the stored form of an Enrollment: the record with its
// symmetric keys blanked, plus the sealed keys.
type enrollmentRecord struct {
	*store.Enrollment
	Sealed []byte `json:"sealed,omitempty"`
}

func (s *Store) decodeEnrollment(key, v []byte) (*store.Enrollment, error) {
	rec := enrollmentRecord{Enrollment: &store.Enrollment{}}
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bktEnrollments, key, err)
	}
	if err := s.openAttestation([]byte(bktEnrollments), key, rec.Sealed, &rec.Enrollment.Attestation); err != nil {
		return nil, err
	}
	return rec.Enrollment, nil
}

// GetEnrollment returns the enrollment or ErrNotFound.
func (s *Store) GetEnrollment(ctx context.Context, registrationID string) (*store.Enrollment, error) {
	return getRecord(ctx, s, "enrollment", bktEnrollments, "registrationId", registrationID, s.decodeEnrollment)
}

// prepareEnrollment validates e and builds what a write needs outside the
// transaction: the key, a private copy to store (keys blanked), the sealed
// keys and the copy to return.
func (s *Store) prepareEnrollment(e *store.Enrollment) (key []byte, stored, out *store.Enrollment, sealed []byte, err error) {
	if e == nil {
		return nil, nil, nil, nil, fmt.Errorf("%w: nil enrollment", store.ErrInvalidRecord)
	}
	if key, err = normKey("registrationId", e.RegistrationID); err != nil {
		return nil, nil, nil, nil, err
	}
	if out, err = record.Clone(e); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("store: enrollment %q: %w", e.RegistrationID, err)
	}
	stored = new(store.Enrollment)
	*stored = *out
	sealed, stored.Attestation, err = s.sealAttestation([]byte(bktEnrollments), key, out.Attestation)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return key, stored, out, sealed, nil
}

// putEnrollmentTx writes one prepared enrollment inside tx and moves its
// endorsement key index entry.
func putEnrollmentTx(tx *bbolt.Tx, key []byte, stored, out *store.Enrollment, sealed []byte, ifMatch, etag string, now time.Time) error {
	oldEK, err := storedEK(key, tx.Bucket([]byte(bktEnrollments)).Get(key))
	if err != nil {
		return err
	}
	err = putRecordTx(tx, bktEnrollments, key, ifMatch, now, func(created time.Time) ([]byte, error) {
		stored.ETag, stored.CreatedAt, stored.UpdatedAt = etag, created, now
		out.ETag, out.CreatedAt, out.UpdatedAt = etag, created, now
		return json.Marshal(enrollmentRecord{Enrollment: stored, Sealed: sealed})
	})
	if err != nil {
		return err
	}
	return reindexEK(tx, key, oldEK, enrollmentEK(&stored.Attestation))
}

// PutEnrollment creates or replaces an enrollment (see Store for ifMatch).
func (s *Store) PutEnrollment(ctx context.Context, e *store.Enrollment, ifMatch string) (*store.Enrollment, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: put enrollment: %w", err)
	}
	defer done()
	key, stored, out, sealed, err := s.prepareEnrollment(e)
	if err != nil {
		return nil, err
	}
	etag, now := newETag(), s.now().UTC()
	err = s.batch(func(tx *bbolt.Tx) error {
		return putEnrollmentTx(tx, key, stored, out, sealed, ifMatch, etag, now)
	})
	if err != nil {
		return nil, fmt.Errorf("store: put enrollment: %w", err)
	}
	return out, nil
}

// bulkFillPercent is the leaf fill of bulk appends (bbolt's default is 0.5).
const bulkFillPercent = 0.9

// PutEnrollments writes many enrollments unconditionally in ONE transaction
// (all or nothing) and returns them as stored. It is the bulk import path:
// callers importing very large sets should pass chunks of about 10,000.
func (s *Store) PutEnrollments(ctx context.Context, es []*store.Enrollment) ([]*store.Enrollment, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: put enrollments: %w", err)
	}
	defer done()
	type prepared struct {
		key         []byte
		stored, out *store.Enrollment
		sealed      []byte
		etag        string
		index       int
	}
	ps := make([]prepared, len(es))
	for i, e := range es {
		key, stored, out, sealed, err := s.prepareEnrollment(e)
		if err != nil {
			return nil, fmt.Errorf("store: put enrollments: item %d: %w", i, err)
		}
		ps[i] = prepared{key, stored, out, sealed, newETag(), i}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: put enrollments: %w", err)
	}
	// Sorted keys insert faster; a stable sort keeps the last of duplicates last.
	slices.SortStableFunc(ps, func(a, b prepared) int { return bytes.Compare(a.key, b.key) })
	now := s.now().UTC()
	err = s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(bktEnrollments))
		if last, _ := b.Cursor().Last(); len(ps) > 0 && bytes.Compare(ps[0].key, last) > 0 {
			// Appending past the last key (an import of sorted ids): pack
			// leaf pages full instead of bbolt's default half-full splits.
			b.FillPercent = bulkFillPercent
		}
		for _, p := range ps {
			if err := putEnrollmentTx(tx, p.key, p.stored, p.out, p.sealed, "", p.etag, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: put enrollments: %w", err)
	}
	outs := make([]*store.Enrollment, len(ps))
	for _, p := range ps {
		outs[p.index] = p.out
	}
	return outs, nil
}

// DeleteEnrollment deletes an enrollment: ErrNotFound if absent,
// ErrPreconditionFailed if ifMatch names another etag.
func (s *Store) DeleteEnrollment(ctx context.Context, registrationID, ifMatch string) error {
	done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: delete enrollment: %w", err)
	}
	defer done()
	err = s.deleteRecord(bktEnrollments, "registrationId", registrationID, ifMatch, func(tx *bbolt.Tx, key, old []byte, _ recordHead) error {
		oldEK, err := storedEK(key, old)
		if err != nil {
			return err
		}
		return reindexEK(tx, key, oldEK, "")
	})
	if err != nil {
		return fmt.Errorf("store: delete enrollment: %w", err)
	}
	return nil
}

// ListEnrollments returns one page of enrollments in key order.
func (s *Store) ListEnrollments(ctx context.Context, q store.Query) (store.Page[*store.Enrollment], error) {
	return listRecords(ctx, s, "enrollments", bktEnrollments, 'e', q, s.decodeEnrollment)
}

// CountEnrollments returns the number of enrollments (a stored counter: O(1)).
func (s *Store) CountEnrollments(ctx context.Context) (int, error) {
	return s.count(ctx, bktCounts, bktEnrollments)
}
