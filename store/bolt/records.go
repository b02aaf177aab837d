package bolt

// The record helpers every record kind shares: keys and etags, the
// If-Match check, writes through group commit, counters, sealed
// attestations, and the generic get, list, put and delete of a record.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

// recordHead is the part of a stored record that writes need: the etag for
// If-Match, the creation time to preserve, and (registrations) the group.
type recordHead struct {
	ETag              string    `json:"etag"`
	CreatedAt         time.Time `json:"createdDateTimeUtc"`
	EnrollmentGroupID string    `json:"enrollmentGroupId"`
}

// normKey validates and lowercases a registration or group id.
func normKey(what, id string) ([]byte, error) {
	k, err := record.Key(what, id)
	return []byte(k), err
}

// precondition applies ifMatch to the stored value old (nil if absent) and
// returns its head.
func precondition(bucket string, key, old []byte, ifMatch string) (recordHead, error) {
	var h recordHead
	if old != nil {
		if err := json.Unmarshal(old, &h); err != nil {
			return h, fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bucket, key, err)
		}
	}
	m := record.ETag(ifMatch)
	if m == "" || m == "*" {
		return h, nil
	}
	if old == nil {
		return h, fmt.Errorf("%w: %s %q does not exist", store.ErrPreconditionFailed, strings.TrimSuffix(bucket, "s"), key)
	}
	if h.ETag != m {
		return h, fmt.Errorf("%w: %s %q has another etag", store.ErrPreconditionFailed, strings.TrimSuffix(bucket, "s"), key)
	}
	return h, nil
}

// isOutcome reports errors that are answers, not failures: a batch function
// returns them only before writing anything, so the batch need not roll back.
func isOutcome(err error) bool {
	return errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrPreconditionFailed) || errors.Is(err, store.ErrLimit)
}

// batch runs fn in a durable (fsynced) write transaction. A lone writer
// commits at once with db.Update; when other writes are in flight, writers
// are coalesced into one transaction and one fsync by group commit (see
// groupCommit: a batch takes every write queued while the previous one
// committed). fn may therefore run more than once (a batch is retried
// without a failing member), so it must depend only
// on the transaction's state and on values computed before the call.
// Outcome errors (not found, etag mismatch) are returned
// before fn writes anything; they reach the caller without failing the
// shared transaction.
func (s *Store) batch(fn func(tx *bbolt.Tx) error) error {
	var outcome error
	wrapped := func(tx *bbolt.Tx) error {
		outcome = nil
		err := fn(tx)
		if err != nil && isOutcome(err) {
			outcome = err
			return nil
		}
		return err
	}
	var err error
	if s.writers.Add(1) == 1 || s.noBatch {
		err = s.db.Update(wrapped)
	} else {
		err = s.group.do(s.db, wrapped)
	}
	s.writers.Add(-1)
	if err != nil {
		return err
	}
	return outcome
}

// addCount adds delta to the counter at key in bucket b; zero counters are removed.
func addCount(b *bbolt.Bucket, key []byte, delta int64) error {
	var n uint64
	if v := b.Get(key); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	n = uint64(int64(n) + delta)
	if int64(n) <= 0 {
		return b.Delete(key)
	}
	return b.Put(key, u64(n))
}

// readCount reads a counter.
func readCount(b *bbolt.Bucket, key []byte) int {
	if v := b.Get(key); len(v) == 8 {
		return int(binary.BigEndian.Uint64(v))
	}
	return 0
}

// sealAttestation seals the symmetric keys of a for the record (bucket, key)
// and returns a copy of a whose keys are blank. No secrets: nil, a.
func (s *Store) sealAttestation(bucket, key []byte, a store.Attestation) ([]byte, store.Attestation, error) {
	return s.sealer.SealAttestation(bucket, key, a)
}

// openAttestation restores the symmetric keys sealed for (bucket, key) into a.
func (s *Store) openAttestation(bucket, key, sealed []byte, a *store.Attestation) error {
	return s.sealer.OpenAttestation(bucket, key, sealed, a)
}

// getRecord reads the record of id (named idField in errors) from bucket
// and decodes it: ErrNotFound when it is absent or id is not a valid id.
// what names the kind of record in errors ("enrollment").
func getRecord[T any](ctx context.Context, s *Store, what, bucket, idField, id string, decode func(key, v []byte) (T, error)) (T, error) {
	var out T
	done, err := s.enter(ctx)
	if err != nil {
		return out, fmt.Errorf("store: get %s: %w", what, err)
	}
	defer done()
	key, err := normKey(idField, id)
	if err != nil {
		return out, fmt.Errorf("%w: %w", store.ErrNotFound, err)
	}
	err = s.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket([]byte(bucket)).Get(key)
		if v == nil {
			return fmt.Errorf("%w: %s %q", store.ErrNotFound, what, id)
		}
		out, err = decode(key, v)
		return err
	})
	return out, err
}

// listRecords returns one page of the records of bucket (keys of the given
// listing kind) in key order; what names them in errors ("enrollments").
func listRecords[T any](ctx context.Context, s *Store, what, bucket string, kind byte, q store.Query, decode func(key, v []byte) (T, error)) (store.Page[T], error) {
	var page store.Page[T]
	done, err := s.enter(ctx)
	if err != nil {
		return page, fmt.Errorf("store: list %s: %w", what, err)
	}
	defer done()
	err = s.db.View(func(tx *bbolt.Tx) error {
		var err error
		page.Continuation, err = listBucket(tx.Bucket([]byte(bucket)), kind, nil, q, func(k, v []byte) error {
			item, err := decode(k, v)
			page.Items = append(page.Items, item)
			return err
		})
		return err
	})
	if err != nil {
		return store.Page[T]{}, fmt.Errorf("store: list %s: %w", what, err)
	}
	return page, nil
}

// putRecordTx writes the record encode returns under key in bucket, inside
// tx, if ifMatch allows it (see precondition). encode gets the creation time
// to record: the stored record's, or now for a new one. A new record is
// counted.
func putRecordTx(tx *bbolt.Tx, bucket string, key []byte, ifMatch string, now time.Time, encode func(created time.Time) ([]byte, error)) error {
	b := tx.Bucket([]byte(bucket))
	old := b.Get(key)
	h, err := precondition(bucket, key, old, ifMatch)
	if err != nil {
		return err
	}
	created := now
	if old != nil && !h.CreatedAt.IsZero() {
		created = h.CreatedAt
	}
	data, err := encode(created)
	if err != nil {
		return fmt.Errorf("%w: %s %q: %w", store.ErrInvalidRecord, bucket, key, err)
	}
	if err := b.Put(key, data); err != nil {
		return err
	}
	if old == nil {
		return addCount(tx.Bucket([]byte(bktCounts)), []byte(bucket), 1)
	}
	return nil
}

// deleteRecord deletes bucket/key under ifMatch, decrementing the bucket's
// counter; extra runs inside the same transaction, before the delete, with
// the old value and its head.
func (s *Store) deleteRecord(bucket, what, id, ifMatch string, extra func(tx *bbolt.Tx, key, old []byte, h recordHead) error) error {
	key, err := normKey(what, id)
	if err != nil {
		return fmt.Errorf("%w: %w", store.ErrNotFound, err)
	}
	return s.batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		old := b.Get(key)
		if old == nil {
			return fmt.Errorf("%w: %s %q", store.ErrNotFound, strings.TrimSuffix(bucket, "s"), id)
		}
		h, err := precondition(bucket, key, old, ifMatch)
		if err != nil {
			return err
		}
		if extra != nil {
			if err := extra(tx, key, old, h); err != nil {
				return err
			}
		}
		if err := b.Delete(key); err != nil {
			return err
		}
		return addCount(tx.Bucket([]byte(bktCounts)), []byte(bucket), -1)
	})
}

func (s *Store) count(ctx context.Context, bucket, key string) (int, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: count %s: %w", key, err)
	}
	defer done()
	var n int
	err = s.db.View(func(tx *bbolt.Tx) error {
		n = readCount(tx.Bucket([]byte(bucket)), []byte(key))
		return nil
	})
	return n, err
}
