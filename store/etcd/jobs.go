package etcd

// Jobs, the provisioning service's outbox (j/<id>: the job, Secret sealed)
// and their due index (jd/<20-digit ns>/<id> -> ""): when each job can next
// be claimed, its NotBefore while pending, its LeaseExpires while leased.
// Every write of a job moves its index entry in the same transaction,
// compared on the job's mod revision, so the index names exactly the jobs.
//
// Leases are times stored in the job, decided by the store's clock, not
// etcd leases: a job must outlive every node, and a lease that ends only
// makes the job claimable again. A node that claims takes each job with a
// compare-and-swap on the mod revision it read, so two nodes never hold one
// job; a node that lost a job (its lease expired and another claimed it)
// fails the same compare when it releases or finishes it. Leases are never
// ended at Open: other nodes of the cluster may hold them.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

// claimChunk is how many due jobs one claim round tries at once: each is a
// nested transaction of three writes, below etcd's 128 operations.
const claimChunk = 32

// available is when a stored job can next be claimed.
func available(j *store.Job) time.Time {
	if j.Owner != "" {
		return j.LeaseExpires
	}
	return j.NotBefore
}

// jobDueKey is the due index key (relative) of job j.
func jobDueKey(j *store.Job) string { return pfxJobDue + expiryStamp(available(j)) + "/" + j.ID }

func (s *Store) decodeJob(id string, kv *mvccpb.KeyValue) (*store.Job, []byte, error) {
	rec := record.Job{Job: &store.Job{}}
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", store.ErrCorrupt, s.rel(kv.Key), err)
	}
	if rec.Sealed != nil {
		pt, err := s.sealer.Open([]byte(bktJobs), []byte(id), rec.Sealed)
		if err != nil {
			return nil, nil, err
		}
		rec.Job.Secret = pt
	}
	rec.Job.ID = id
	return rec.Job, rec.Sealed, nil
}

// encodeJob returns the stored value of j with its Secret sealed as sealed.
func encodeJob(j *store.Job, sealed []byte) (string, error) {
	data, err := json.Marshal(record.Job{Job: j, Sealed: sealed})
	if err != nil {
		return "", fmt.Errorf("%w: job %q: %w", store.ErrInvalidRecord, j.ID, err)
	}
	return string(data), nil
}

// sealJob seals j's Secret (nil when it has none).
func (s *Store) sealJob(j *store.Job) []byte {
	if len(j.Secret) == 0 {
		return nil
	}
	return s.sealer.Seal([]byte(bktJobs), []byte(j.ID), j.Secret)
}

// jobWriteOps are the writes that replace job old (nil: none) by j.
func (s *Store) jobWriteOps(j, old *store.Job, value string) []clientv3.Op {
	ops := make([]clientv3.Op, 0, 3)
	if old != nil && jobDueKey(old) != jobDueKey(j) {
		ops = append(ops, clientv3.OpDelete(s.k(jobDueKey(old))))
	}
	return append(ops, clientv3.OpPut(s.k(pfxJob+j.ID), value), clientv3.OpPut(s.k(jobDueKey(j)), ""))
}

// EnqueueJob writes op (leased until its expiry, as PutOperation) and the
// job, pending and unowned, in one transaction. With maxPending > 0 a new
// job is refused with a *LimitError when that many jobs exist, counted
// just before the write: the bound is for back-pressure, and concurrent
// enqueues on several nodes may pass it by at most their number.
func (s *Store) EnqueueJob(ctx context.Context, op *store.Operation, job *store.Job, maxPending int) error {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: enqueue job: %w", err)
	}
	defer done()
	if op == nil {
		return fmt.Errorf("store: enqueue job: %w: nil operation", store.ErrInvalidRecord)
	}
	if err := record.CheckJob(job); err != nil {
		return fmt.Errorf("store: enqueue job: %w", err)
	}
	opData, err := encodeOperation(op)
	if err != nil {
		return fmt.Errorf("store: enqueue job: %w", err)
	}
	j := *job
	j.Owner, j.LeaseExpires = "", time.Time{}
	if j.CreatedAt.IsZero() {
		j.CreatedAt = s.now().UTC()
	}
	value, err := encodeJob(&j, s.sealJob(&j))
	if err != nil {
		return fmt.Errorf("store: enqueue job: %w", err)
	}
	for attempt := 0; ; attempt++ {
		lease, err := s.leases.get(ctx, op.ExpiresAt)
		if err != nil {
			return fmt.Errorf("store: enqueue job: %w", err)
		}
		_, _, err = s.casWrite(ctx, pfxJob+j.ID, "", func(kv *mvccpb.KeyValue) (casPlan, error) {
			var old *store.Job
			if kv != nil {
				if old, _, err = s.decodeJob(j.ID, kv); err != nil {
					return casPlan{}, err
				}
			} else if maxPending > 0 {
				resp, err := s.cli.Get(ctx, s.k(pfxJob), clientv3.WithRange(s.k(prefixEnd(pfxJob))), clientv3.WithCountOnly())
				if err != nil {
					return casPlan{}, wrapErr(err)
				}
				if resp.Count >= int64(maxPending) {
					return casPlan{}, &store.LimitError{What: "pending jobs", Limit: maxPending}
				}
			}
			return casPlan{ops: append(s.jobWriteOps(&j, old, value), s.operationOps(op, opData, lease)...)}, nil
		})
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt < 3 {
			s.leases.drop(lease)
			continue
		}
		if err != nil {
			return fmt.Errorf("store: enqueue job: %w", err)
		}
		return nil
	}
}

// ClaimJobs leases to owner, until now+lease, up to max jobs due by now and
// not leased (or whose lease has expired), the earliest due first. It
// reads the due index up to now (a read that writes nothing when no job is
// due), then takes each job with a compare-and-swap on the revision it
// read; jobs another node took meanwhile are skipped and the index read
// again.
func (s *Store) ClaimJobs(ctx context.Context, owner string, lease time.Duration, max int) ([]*store.Job, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: claim jobs: %w", err)
	}
	defer done()
	if owner == "" || lease <= 0 || max <= 0 {
		return nil, fmt.Errorf("store: claim jobs: %w: need an owner, a positive lease and max", store.ErrInvalidRecord)
	}
	now := s.now().UTC()
	until := now.Add(lease)
	end := s.k(pfxJobDue + expiryStamp(now.Add(time.Nanosecond)))
	var out []*store.Job
	for range maxAttempts {
		want := min(max-len(out), claimChunk)
		resp, err := s.cli.Get(ctx, s.k(pfxJobDue), clientv3.WithRange(end), clientv3.WithKeysOnly(),
			clientv3.WithLimit(int64(want)), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return nil, fmt.Errorf("store: claim jobs: %w", wrapErr(err))
		}
		if len(resp.Kvs) == 0 {
			break
		}
		// Read the jobs the entries name at the index's revision.
		ids := make([]string, len(resp.Kvs))
		gets := make([]clientv3.Op, len(resp.Kvs))
		for i, kv := range resp.Kvs {
			rel := s.rel(kv.Key)
			_, id, ok := strings.Cut(strings.TrimPrefix(rel, pfxJobDue), "/")
			if !ok {
				return nil, fmt.Errorf("store: claim jobs: %w: %s", store.ErrCorrupt, rel)
			}
			ids[i] = id
			gets[i] = clientv3.OpGet(s.k(pfxJob+id), clientv3.WithRev(resp.Header.Revision))
		}
		tr, err := s.cli.Txn(ctx).Then(gets...).Commit()
		if err != nil {
			return nil, fmt.Errorf("store: claim jobs: %w", wrapErr(err))
		}
		var claims []clientv3.Op
		var claimed []*store.Job
		for i, r := range tr.Responses {
			kvs := r.GetResponseRange().Kvs
			if len(kvs) != 1 {
				return nil, fmt.Errorf("store: claim jobs: %w: %s%s names a missing job", store.ErrCorrupt, pfxJobDue, ids[i])
			}
			old, sealed, err := s.decodeJob(ids[i], kvs[0])
			if err != nil {
				return nil, fmt.Errorf("store: claim jobs: %w", err)
			}
			j := *old
			j.Owner, j.LeaseExpires = owner, until
			value, err := encodeJob(&j, sealed)
			if err != nil {
				return nil, fmt.Errorf("store: claim jobs: %w", err)
			}
			jobKey := s.k(pfxJob + j.ID)
			claims = append(claims, clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(jobKey), "=", kvs[0].ModRevision)},
				s.jobWriteOps(&j, old, value), nil))
			claimed = append(claimed, &j)
		}
		cr, err := s.cli.Txn(ctx).Then(claims...).Commit()
		if err != nil {
			return nil, fmt.Errorf("store: claim jobs: %w", wrapErr(err))
		}
		lost := false
		for i, r := range cr.Responses {
			if r.GetResponseTxn().GetSucceeded() {
				out = append(out, claimed[i])
			} else {
				lost = true
			}
		}
		if !lost || len(out) >= max {
			break
		}
	}
	return out, nil
}

// heldJob reads job id for a write by owner: ErrPreconditionFailed when it
// is gone or another owner holds it.
func (s *Store) heldJob(id, owner string, kv *mvccpb.KeyValue) (*store.Job, []byte, error) {
	if kv == nil {
		return nil, nil, fmt.Errorf("%w: job %q does not exist", store.ErrPreconditionFailed, id)
	}
	old, sealed, err := s.decodeJob(id, kv)
	if err != nil {
		return nil, nil, err
	}
	if owner == "" || old.Owner != owner {
		return nil, nil, fmt.Errorf("%w: job %q is not held by %q", store.ErrPreconditionFailed, id, owner)
	}
	return old, sealed, nil
}

// ReleaseJob ends job.Owner's lease and writes the job's progress, with a
// compare-and-swap on the job as the owner read it.
func (s *Store) ReleaseJob(ctx context.Context, job *store.Job) error {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: release job: %w", err)
	}
	defer done()
	if err := record.CheckJob(job); err != nil {
		return fmt.Errorf("store: release job: %w", err)
	}
	sealed := s.sealJob(job)
	_, _, err = s.casWrite(ctx, pfxJob+job.ID, "", func(kv *mvccpb.KeyValue) (casPlan, error) {
		old, _, err := s.heldJob(job.ID, job.Owner, kv)
		if err != nil {
			return casPlan{}, err
		}
		j := *old
		j.Data, j.Secret, j.Attempts, j.NotBefore = job.Data, job.Secret, job.Attempts, job.NotBefore
		j.Owner, j.LeaseExpires = "", time.Time{}
		value, err := encodeJob(&j, sealed)
		if err != nil {
			return casPlan{}, err
		}
		return casPlan{ops: s.jobWriteOps(&j, old, value)}, nil
	})
	if err != nil {
		return fmt.Errorf("store: release job: %w", err)
	}
	return nil
}

// FinishJob records r (unless nil) as RecordRegistration does, writes op
// and deletes the job owner holds, in one transaction that compares the
// job's revision.
func (s *Store) FinishJob(ctx context.Context, jobID, owner string, r *store.Registration, op *store.Operation) (*store.Registration, error) {
	if err := record.CheckID("job id", jobID); err != nil {
		return nil, fmt.Errorf("store: finish job: %w", err)
	}
	if op == nil {
		return nil, fmt.Errorf("store: finish job: %w: nil operation", store.ErrInvalidRecord)
	}
	// endJob reads the job for the write and returns the compare that pins
	// it and the writes that delete it.
	endJob := func(ctx context.Context, kv *mvccpb.KeyValue) (casPlan, error) {
		old, _, err := s.heldJob(jobID, owner, kv)
		if err != nil {
			return casPlan{}, err
		}
		jobKey := s.k(pfxJob + jobID)
		return casPlan{
			cmps: []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(jobKey), "=", kv.ModRevision)},
			ops:  []clientv3.Op{clientv3.OpDelete(jobKey), clientv3.OpDelete(s.k(jobDueKey(old)))},
		}, nil
	}
	if r != nil {
		reg, err := s.recordRegistration(ctx, r, op, false, func(ctx context.Context) (casPlan, error) {
			resp, err := s.cli.Get(ctx, s.k(pfxJob+jobID))
			if err != nil {
				return casPlan{}, wrapErr(err)
			}
			var kv *mvccpb.KeyValue
			if len(resp.Kvs) == 1 {
				kv = resp.Kvs[0]
			}
			return endJob(ctx, kv)
		})
		if err != nil {
			return nil, fmt.Errorf("store: finish job: %w", err)
		}
		return reg, nil
	}
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: finish job: %w", err)
	}
	defer done()
	opData, err := encodeOperation(op)
	if err != nil {
		return nil, fmt.Errorf("store: finish job: %w", err)
	}
	for attempt := 0; ; attempt++ {
		lease, err := s.leases.get(ctx, op.ExpiresAt)
		if err != nil {
			return nil, fmt.Errorf("store: finish job: %w", err)
		}
		_, _, err = s.casWrite(ctx, pfxJob+jobID, "", func(kv *mvccpb.KeyValue) (casPlan, error) {
			p, err := endJob(ctx, kv)
			if err != nil {
				return casPlan{}, err
			}
			// casWrite compares the job's revision itself.
			return casPlan{ops: append(p.ops, s.operationOps(op, opData, lease)...)}, nil
		})
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt < 3 {
			s.leases.drop(lease)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("store: finish job: %w", err)
		}
		return nil, nil
	}
}

// CountJobs returns the number of jobs, pending and leased.
func (s *Store) CountJobs(ctx context.Context) (int, error) {
	return s.count(ctx, "jobs", pfxJob)
}
