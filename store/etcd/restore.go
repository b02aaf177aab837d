package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
	"github.com/tpmdps/dpsd/store/internal/seal"
)

// ErrNotEmpty: a restore or copy target already holds records.
var ErrNotEmpty = errors.New("store: target prefix is not empty")

// Limits of one restore transaction, below etcd's defaults (128
// operations, 1.5 MiB per request).
const (
	restoreOps   = 100
	restoreBytes = 1 << 20
)

// Restore writes a backup stream (Backup) into this store's prefix, which
// must hold no record yet (a freshly opened prefix), and returns how many
// records it wrote. The backup must have been sealed with this store's key
// (its key check is compared first). Records get new etags (the revisions
// of this cluster); operations and used challenges that have expired by
// the store's clock are dropped, the others leased again until their
// expiry. It writes in transactions of at most 100 keys and 1 MiB, so it
// is not atomic: check the stream first (ReadBackup with a nil fn), and
// after a failure delete the prefix and restore again.
func (s *Store) Restore(ctx context.Context, r io.Reader) (uint64, error) {
	ctx, done, err := s.enterLong(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: restore: %w", err)
	}
	defer done()
	if err := s.mustBeEmpty(ctx); err != nil {
		return 0, fmt.Errorf("store: restore: %w", err)
	}
	now := s.now()
	var batch []clientv3.Op
	size := 0
	var written uint64
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if _, err := s.cli.Txn(ctx).Then(batch...).Commit(); err != nil {
			return wrapErr(err)
		}
		batch, size = batch[:0], 0
		return nil
	}
	add := func(ops ...clientv3.Op) error {
		if len(batch)+len(ops) > restoreOps || size > restoreBytes {
			if err := flush(); err != nil {
				return err
			}
		}
		for _, op := range ops {
			size += len(op.KeyBytes()) + len(op.ValueBytes())
		}
		batch = append(batch, ops...)
		return nil
	}
	_, _, err = ReadBackup(r, func(key string, value []byte) error {
		switch {
		case key == keySchema:
			return nil
		case key == keyCheck:
			cur, err := s.cli.Get(ctx, s.k(keyCheck))
			if err != nil {
				return wrapErr(err)
			}
			if len(cur.Kvs) != 1 || !seal.EqualCheck(cur.Kvs[0].Value, value) {
				return fmt.Errorf("%w: the backup's secrets are sealed with another store key than this cluster's", ErrKey)
			}
			return nil
		case strings.HasPrefix(key, pfxOp):
			var op store.Operation
			if err := json.Unmarshal(value, &op); err != nil {
				return fmt.Errorf("%w: %s: %w", store.ErrCorrupt, key, err)
			}
			if !now.Before(op.ExpiresAt) {
				return nil
			}
			lease, err := s.leases.get(ctx, op.ExpiresAt)
			if err != nil {
				return err
			}
			written++
			return add(s.operationOps(&op, value, lease)...)
		case strings.HasPrefix(key, pfxUsed):
			secs, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil {
				return fmt.Errorf("%w: %s: %w", store.ErrCorrupt, key, err)
			}
			exp := time.Unix(secs, 0)
			if !now.Before(exp) {
				return nil
			}
			lease, err := s.leases.get(ctx, exp)
			if err != nil {
				return err
			}
			written++
			return add(clientv3.OpPut(s.k(key), string(value), clientv3.WithLease(lease)))
		case !backedUp(key):
			return nil
		}
		written++
		return add(clientv3.OpPut(s.k(key), string(value)))
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return written, fmt.Errorf("store: restore into %s: %w", s.prefix, err)
	}
	return written, nil
}

// mustBeEmpty fails unless the prefix holds nothing but its schema and key check.
func (s *Store) mustBeEmpty(ctx context.Context) error {
	resp, err := s.cli.Get(ctx, s.prefix, clientv3.WithRange(prefixEnd(s.prefix)), clientv3.WithKeysOnly(), clientv3.WithLimit(3))
	if err != nil {
		return wrapErr(err)
	}
	for _, kv := range resp.Kvs {
		if rel := s.rel(kv.Key); rel != keySchema && rel != keyCheck {
			return fmt.Errorf("%w: %s holds %s", ErrNotEmpty, s.prefix, rel)
		}
	}
	return nil
}

// CountRegistrations returns the number of registration records.
func (s *Store) CountRegistrations(ctx context.Context) (int, error) {
	return s.count(ctx, "registrations", pfxReg)
}

// ListRegistrations returns one page of every registration record, in key order.
func (s *Store) ListRegistrations(ctx context.Context, q store.Query) (store.Page[*store.Registration], error) {
	return listRecords(ctx, s, "registrations", 'a', pfxReg, q, s.decodeRegistration)
}

// Check reads the whole prefix at one revision and checks the engine's
// invariants: every record decodes and its secrets open with the store's
// key, the group index, the endorsement key index and the job due index
// name exactly the records that should be there, and meta/groups counts the groups. It
// returns every problem found, joined, or nil.
func (s *Store) Check(ctx context.Context) error {
	ctx, done, err := s.enterLong(ctx)
	if err != nil {
		return fmt.Errorf("store: check: %w", err)
	}
	defer done()
	var problems []error
	groupIdx, wantGroupIdx := map[string]bool{}, map[string]bool{}
	ekIdx, wantEKIdx := map[string]bool{}, map[string]bool{}
	dueIdx, wantDueIdx := map[string]bool{}, map[string]bool{}
	groups, metaGroups := 0, -1
	_, err = s.walk(ctx, 0, func(kv *mvccpb.KeyValue) error {
		rel := s.rel(kv.Key)
		var derr error
		switch {
		case rel == keyGroups:
			if metaGroups, derr = strconv.Atoi(string(kv.Value)); derr != nil {
				derr = fmt.Errorf("%w: %s is %q", store.ErrCorrupt, rel, kv.Value)
			}
		case strings.HasPrefix(rel, pfxEnroll):
			var e *store.Enrollment
			if e, derr = s.decodeEnrollment(rel[len(pfxEnroll):], kv); derr == nil {
				if ek := enrollmentEK(&e.Attestation); ek != "" {
					wantEKIdx[ekKey(ek, rel[len(pfxEnroll):])] = true
				}
			}
		case strings.HasPrefix(rel, pfxGroup):
			groups++
			_, derr = s.decodeGroup(rel[len(pfxGroup):], kv)
		case strings.HasPrefix(rel, pfxReg):
			var r *store.Registration
			if r, derr = s.decodeRegistration(rel[len(pfxReg):], kv); derr == nil && r.EnrollmentGroupID != "" {
				wantGroupIdx[groupRegKey(record.Lower(r.EnrollmentGroupID), rel[len(pfxReg):])] = true
			}
		case strings.HasPrefix(rel, pfxGroupReg):
			groupIdx[rel] = true
		case strings.HasPrefix(rel, pfxEK):
			ekIdx[rel] = true
		case strings.HasPrefix(rel, pfxHub):
			_, derr = s.decodeLinkedHub(rel[len(pfxHub):], kv)
		case strings.HasPrefix(rel, pfxJob):
			var j *store.Job
			if j, _, derr = s.decodeJob(rel[len(pfxJob):], kv); derr == nil {
				wantDueIdx[jobDueKey(j)] = true
			}
		case strings.HasPrefix(rel, pfxJobDue):
			dueIdx[rel] = true
		}
		if derr != nil {
			problems = append(problems, derr)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: check: %w", err)
	}
	diff := func(what string, have, want map[string]bool) {
		for k := range have {
			if !want[k] {
				problems = append(problems, fmt.Errorf("%w: %s entry %q names no such record", store.ErrCorrupt, what, k))
			}
		}
		for k := range want {
			if !have[k] {
				problems = append(problems, fmt.Errorf("%w: %s entry %q is missing", store.ErrCorrupt, what, k))
			}
		}
	}
	diff("group index", groupIdx, wantGroupIdx)
	diff("endorsement key index", ekIdx, wantEKIdx)
	diff("job due index", dueIdx, wantDueIdx)
	if max(metaGroups, 0) != groups {
		problems = append(problems, fmt.Errorf("%w: %s says %d groups, there are %d", store.ErrCorrupt, keyGroups, metaGroups, groups))
	}
	if len(problems) > 0 {
		return fmt.Errorf("store: check %s: %w", s.prefix, errors.Join(problems...))
	}
	return nil
}

// isNotEmpty reports an ErrNotEmpty.
func isNotEmpty(err error) bool { return errors.Is(err, ErrNotEmpty) }
