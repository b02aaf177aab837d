package bolt

// Operations (what a device polls for) and their expiry: buckets operations
// and expiry; Sweep deletes the expired ones.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

// encodeOperation validates op and returns its key, stored value and expiry.
func encodeOperation(op *store.Operation) ([]byte, []byte, time.Time, error) {
	if err := record.CheckID("operationId", op.ID); err != nil {
		return nil, nil, time.Time{}, err
	}
	if op.ExpiresAt.IsZero() {
		return nil, nil, time.Time{}, fmt.Errorf("%w: operation %q has no expiry", store.ErrInvalidRecord, op.ID)
	}
	data, err := json.Marshal(op)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("%w: operation %q: %w", store.ErrInvalidRecord, op.ID, err)
	}
	return []byte(op.ID), data, op.ExpiresAt, nil
}

// putOperationTx writes an operation and moves its expiry index entry.
func putOperationTx(tx *bbolt.Tx, key, data []byte, exp time.Time) error {
	b := tx.Bucket([]byte(bktOperations))
	idx := tx.Bucket([]byte(bktExpiry))
	if old := b.Get(key); old != nil {
		var h struct {
			ExpiresAt time.Time `json:"expiresAt"`
		}
		if err := json.Unmarshal(old, &h); err != nil {
			return fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bktOperations, key, err)
		}
		if err := idx.Delete(expiryKey(h.ExpiresAt, expiryOperation, key)); err != nil {
			return err
		}
	}
	if err := b.Put(key, data); err != nil {
		return err
	}
	return idx.Put(expiryKey(exp, expiryOperation, key), []byte{})
}

// PutOperation writes (or replaces) an operation. ExpiresAt must be set: the
// operation is invisible after it and removed by Sweep.
func (s *Store) PutOperation(ctx context.Context, op *store.Operation) error {
	done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: put operation: %w", err)
	}
	defer done()
	if op == nil {
		return fmt.Errorf("store: put operation: %w: nil operation", store.ErrInvalidRecord)
	}
	key, data, exp, err := encodeOperation(op)
	if err != nil {
		return fmt.Errorf("store: put operation: %w", err)
	}
	if err := s.batch(func(tx *bbolt.Tx) error { return putOperationTx(tx, key, data, exp) }); err != nil {
		return fmt.Errorf("store: put operation: %w", err)
	}
	return nil
}

// GetOperation returns the operation, or ErrNotFound if absent or expired
// (now >= ExpiresAt).
func (s *Store) GetOperation(ctx context.Context, operationID string) (*store.Operation, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: get operation: %w", err)
	}
	defer done()
	if err := record.CheckID("operationId", operationID); err != nil {
		return nil, fmt.Errorf("%w: %w", store.ErrNotFound, err)
	}
	now := s.now()
	var op *store.Operation
	err = s.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket([]byte(bktOperations)).Get([]byte(operationID))
		if v == nil {
			return fmt.Errorf("%w: operation %q", store.ErrNotFound, operationID)
		}
		op = new(store.Operation)
		if err := json.Unmarshal(v, op); err != nil {
			return fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bktOperations, operationID, err)
		}
		if !now.Before(op.ExpiresAt) {
			return fmt.Errorf("%w: operation %q expired", store.ErrNotFound, operationID)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return op, nil
}

// sweepChunk bounds the deletions of one Sweep transaction.
const sweepChunk = 10000

// Sweep deletes the operations whose expiry is at or before now, walking the
// expiry index from its start, in transactions of at most 10,000 deletions.
// It returns how many it deleted.
func (s *Store) Sweep(ctx context.Context, now time.Time) (int, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: sweep: %w", err)
	}
	defer done()
	var limit uint64
	if ns := now.UnixNano(); ns > 0 {
		limit = uint64(ns)
	}
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("store: sweep: %w", err)
		}
		n := 0
		err := s.db.Update(func(tx *bbolt.Tx) error {
			n = 0
			idx := tx.Bucket([]byte(bktExpiry))
			var keys [][]byte
			c := idx.Cursor()
			for k, _ := c.First(); k != nil && len(keys) < sweepChunk; k, _ = c.Next() {
				if len(k) < 9 || binary.BigEndian.Uint64(k[:8]) > limit {
					break
				}
				keys = append(keys, bytes.Clone(k))
			}
			ops := tx.Bucket([]byte(bktOperations))
			for _, k := range keys {
				if k[8] != expiryOperation {
					return fmt.Errorf("%w: %s/%x: unknown kind", store.ErrCorrupt, bktExpiry, k)
				}
				if err := ops.Delete(k[9:]); err != nil {
					return err
				}
				if err := idx.Delete(k); err != nil {
					return err
				}
			}
			n = len(keys)
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("store: sweep: %w", err)
		}
		total += n
		if n < sweepChunk {
			if total > 0 {
				s.log.Debug("store: swept expired entries", "count", total)
			}
			return total, nil
		}
	}
}
