package etcd

// Operations (what a device polls for, o/<id>), their expiry index
// (x/<expiry>/<id>) and Sweep. Both keys are attached to a lease that ends
// after the operation expires, so etcd deletes them by itself even when no
// node sweeps; Sweep deletes those the store's clock has seen expire first.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

// encodeOperation validates op and returns its stored value.
func encodeOperation(op *store.Operation) ([]byte, error) {
	if err := record.CheckID("operationId", op.ID); err != nil {
		return nil, err
	}
	if op.ExpiresAt.IsZero() {
		return nil, fmt.Errorf("%w: operation %q has no expiry", store.ErrInvalidRecord, op.ID)
	}
	data, err := json.Marshal(op)
	if err != nil {
		return nil, fmt.Errorf("%w: operation %q: %w", store.ErrInvalidRecord, op.ID, err)
	}
	return data, nil
}

// operationOps are the writes of an operation and its expiry index entry,
// both under lease. A re-put leaves the old index entry behind; Sweep
// tells it from a live one by its revision.
func (s *Store) operationOps(op *store.Operation, data []byte, lease clientv3.LeaseID) []clientv3.Op {
	return []clientv3.Op{
		clientv3.OpPut(s.k(pfxOp+op.ID), string(data), clientv3.WithLease(lease)),
		clientv3.OpPut(s.k(expiryKey(op.ExpiresAt, op.ID)), "", clientv3.WithLease(lease)),
	}
}

// PutOperation writes (or replaces) an operation. ExpiresAt must be set: the
// operation is invisible after it, removed by Sweep, and by etcd when its
// lease ends.
func (s *Store) PutOperation(ctx context.Context, op *store.Operation) error {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: put operation: %w", err)
	}
	defer done()
	if op == nil {
		return fmt.Errorf("store: put operation: %w: nil operation", store.ErrInvalidRecord)
	}
	data, err := encodeOperation(op)
	if err != nil {
		return fmt.Errorf("store: put operation: %w", err)
	}
	for attempt := 0; ; attempt++ {
		lease, err := s.leases.get(ctx, op.ExpiresAt)
		if err != nil {
			return fmt.Errorf("store: put operation: %w", err)
		}
		_, err = s.cli.Txn(ctx).Then(s.operationOps(op, data, lease)...).Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt < 3 {
			s.leases.drop(lease)
			continue
		}
		if err != nil {
			return fmt.Errorf("store: put operation: %w", wrapErr(err))
		}
		return nil
	}
}

// GetOperation returns the operation, or ErrNotFound if absent or expired
// (now >= ExpiresAt by the store's clock; the lease only bounds how long
// etcd keeps it).
func (s *Store) GetOperation(ctx context.Context, operationID string) (*store.Operation, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: get operation: %w", err)
	}
	defer done()
	if err := record.CheckID("operationId", operationID); err != nil {
		return nil, fmt.Errorf("%w: %w", store.ErrNotFound, err)
	}
	resp, err := s.cli.Get(ctx, s.k(pfxOp+operationID))
	if err != nil {
		return nil, fmt.Errorf("store: get operation: %w", wrapErr(err))
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%w: operation %q", store.ErrNotFound, operationID)
	}
	op := new(store.Operation)
	if err := json.Unmarshal(resp.Kvs[0].Value, op); err != nil {
		return nil, fmt.Errorf("%w: %s%s: %w", store.ErrCorrupt, pfxOp, operationID, err)
	}
	if !s.now().Before(op.ExpiresAt) {
		return nil, fmt.Errorf("%w: operation %q expired", store.ErrNotFound, operationID)
	}
	return op, nil
}

// sweepChunk is how many index entries one Sweep transaction handles:
// each is a nested transaction, below etcd's 128 operations.
const sweepChunk = 40

// Sweep deletes the operations whose expiry is at or before now: it reads
// the expiry index up to now (no scan of the operations) and deletes each
// operation whose revision is its index entry's (an operation written
// again since has a newer entry; the old entry alone goes), 40 entries per
// transaction. It returns how many operations it deleted.
func (s *Store) Sweep(ctx context.Context, now time.Time) (int, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: sweep: %w", err)
	}
	defer done()
	end := s.k(pfxExpiry + fmt.Sprintf("%020d", max(now.UnixNano(), 0)+1))
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("store: sweep: %w", err)
		}
		resp, err := s.cli.Get(ctx, s.k(pfxExpiry), clientv3.WithRange(end), clientv3.WithKeysOnly(),
			clientv3.WithLimit(sweepChunk), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return total, fmt.Errorf("store: sweep: %w", wrapErr(err))
		}
		if len(resp.Kvs) == 0 {
			break
		}
		ops := make([]clientv3.Op, 0, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			rel := s.rel(kv.Key)
			i := strings.IndexByte(rel[len(pfxExpiry):], '/')
			if i < 0 {
				return total, fmt.Errorf("%w: %s", store.ErrCorrupt, rel)
			}
			opKey := s.k(pfxOp + rel[len(pfxExpiry)+i+1:])
			ops = append(ops, clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(opKey), "=", kv.ModRevision)},
				[]clientv3.Op{clientv3.OpDelete(opKey), clientv3.OpDelete(string(kv.Key))},
				[]clientv3.Op{clientv3.OpDelete(string(kv.Key))}))
		}
		tr, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return total, fmt.Errorf("store: sweep: %w", wrapErr(err))
		}
		for _, r := range tr.Responses {
			if r.GetResponseTxn().GetSucceeded() {
				total++
			}
		}
		if !resp.More {
			break
		}
	}
	if total > 0 {
		s.log.Debug("store: swept expired operations", "count", total)
	}
	return total, nil
}
