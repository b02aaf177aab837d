package bolt

// Jobs (the provisioning service's outbox of work that needs outside I/O):
// bucket jobs, keyed by the job id, Secret sealed; bucket jobdue, the
// index of when each job is next available: unix nanoseconds of its
// NotBefore (pending) or LeaseExpires (leased) || id -> empty.
//
// bbolt allows one process per file, so no lease can be held by a live
// process other than this one: Open ends every lease left by an earlier
// process (voidLeases), and jobs interrupted by a crash are due again at
// once.

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

// jobDueKey is the jobdue key of a job available at t.
func jobDueKey(t time.Time, id []byte) []byte {
	var n uint64
	if ns := t.UnixNano(); ns > 0 {
		n = uint64(ns)
	}
	k := make([]byte, 0, 8+len(id))
	k = binary.BigEndian.AppendUint64(k, n)
	return append(k, id...)
}

// available is when a stored job can next be claimed.
func available(j *store.Job) time.Time {
	if j.Owner != "" {
		return j.LeaseExpires
	}
	return j.NotBefore
}

func (s *Store) decodeJob(key, v []byte) (*store.Job, []byte, error) {
	rec := record.Job{Job: &store.Job{}}
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, nil, fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bktJobs, key, err)
	}
	if rec.Sealed != nil {
		pt, err := s.open([]byte(bktJobs), key, rec.Sealed)
		if err != nil {
			return nil, nil, err
		}
		rec.Job.Secret = pt
	}
	return rec.Job, rec.Sealed, nil
}

// sealJob seals j's Secret for the job key (nil when it has none).
func (s *Store) sealJob(key []byte, j *store.Job) []byte {
	if len(j.Secret) == 0 {
		return nil
	}
	return s.seal([]byte(bktJobs), key, j.Secret)
}

// encodeJob returns the stored value of j with its Secret sealed as sealed.
func encodeJob(key []byte, j *store.Job, sealed []byte) ([]byte, error) {
	data, err := json.Marshal(record.Job{Job: j, Sealed: sealed})
	if err != nil {
		return nil, fmt.Errorf("%w: job %q: %w", store.ErrInvalidRecord, key, err)
	}
	return data, nil
}

// putJobTx writes j under key and moves its jobdue entry from old (the
// stored job, nil if none).
func putJobTx(tx *bbolt.Tx, key, data []byte, j, old *store.Job) error {
	idx := tx.Bucket([]byte(bktJobDue))
	if old != nil {
		if err := idx.Delete(jobDueKey(available(old), key)); err != nil {
			return err
		}
	}
	if err := tx.Bucket([]byte(bktJobs)).Put(key, data); err != nil {
		return err
	}
	return idx.Put(jobDueKey(available(j), key), []byte{})
}

// deleteJobTx deletes the job old stored under key and its jobdue entry.
func deleteJobTx(tx *bbolt.Tx, key []byte, old *store.Job) error {
	if err := tx.Bucket([]byte(bktJobDue)).Delete(jobDueKey(available(old), key)); err != nil {
		return err
	}
	if err := tx.Bucket([]byte(bktJobs)).Delete(key); err != nil {
		return err
	}
	return addCount(tx.Bucket([]byte(bktCounts)), []byte(bktJobs), -1)
}

// storedJob reads the job under key in tx and its sealed secret (nil
// when absent).
func (s *Store) storedJob(tx *bbolt.Tx, key []byte) (*store.Job, []byte, error) {
	v := tx.Bucket([]byte(bktJobs)).Get(key)
	if v == nil {
		return nil, nil, nil
	}
	return s.decodeJob(key, v)
}

// EnqueueJob writes op and job (pending, unowned) in one durable step,
// refusing with a *LimitError when maxPending > 0 jobs already exist.
func (s *Store) EnqueueJob(ctx context.Context, op *store.Operation, job *store.Job, maxPending int) error {
	done, err := s.enter(ctx)
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
	opKey, opData, opExp, err := encodeOperation(op)
	if err != nil {
		return fmt.Errorf("store: enqueue job: %w", err)
	}
	j := *job
	j.Owner, j.LeaseExpires = "", time.Time{}
	if j.CreatedAt.IsZero() {
		j.CreatedAt = s.now().UTC()
	}
	key := []byte(j.ID)
	data, err := encodeJob(key, &j, s.sealJob(key, &j))
	if err != nil {
		return fmt.Errorf("store: enqueue job: %w", err)
	}
	err = s.batch(func(tx *bbolt.Tx) error {
		old, _, err := s.storedJob(tx, key)
		if err != nil {
			return err
		}
		if old == nil {
			counts := tx.Bucket([]byte(bktCounts))
			if maxPending > 0 && readCount(counts, []byte(bktJobs)) >= maxPending {
				return &store.LimitError{What: "pending jobs", Limit: maxPending}
			}
			if err := addCount(counts, []byte(bktJobs), 1); err != nil {
				return err
			}
		}
		if err := putJobTx(tx, key, data, &j, old); err != nil {
			return err
		}
		return putOperationTx(tx, opKey, opData, opExp)
	})
	if err != nil {
		return fmt.Errorf("store: enqueue job: %w", err)
	}
	return nil
}

// ClaimJobs leases up to max due, unleased jobs to owner (see store.Store),
// walking jobdue from its start.
func (s *Store) ClaimJobs(ctx context.Context, owner string, lease time.Duration, max int) ([]*store.Job, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: claim jobs: %w", err)
	}
	defer done()
	if owner == "" || lease <= 0 || max <= 0 {
		return nil, fmt.Errorf("store: claim jobs: %w: need an owner, a positive lease and max", store.ErrInvalidRecord)
	}
	now := s.now().UTC()
	until := now.Add(lease)
	var limit uint64
	if ns := now.UnixNano(); ns > 0 {
		limit = uint64(ns)
	}
	// Idle workers ask often: look first in a read transaction, so that
	// asking when nothing is due writes (and fsyncs) nothing.
	due := false
	err = s.db.View(func(tx *bbolt.Tx) error {
		k, _ := tx.Bucket([]byte(bktJobDue)).Cursor().First()
		due = k != nil && len(k) >= 8 && binary.BigEndian.Uint64(k[:8]) <= limit
		return nil
	})
	if err != nil || !due {
		return nil, err
	}
	var out []*store.Job
	err = s.batch(func(tx *bbolt.Tx) error {
		out = out[:0]
		var keys [][]byte
		c := tx.Bucket([]byte(bktJobDue)).Cursor()
		for k, _ := c.First(); k != nil && len(keys) < max; k, _ = c.Next() {
			if len(k) < 8 || binary.BigEndian.Uint64(k[:8]) > limit {
				break
			}
			keys = append(keys, bytes.Clone(k[8:]))
		}
		for _, key := range keys {
			old, sealed, err := s.storedJob(tx, key)
			if err != nil {
				return err
			}
			if old == nil {
				return fmt.Errorf("%w: %s points at a missing job %q", store.ErrCorrupt, bktJobDue, key)
			}
			j := *old
			j.Owner, j.LeaseExpires = owner, until
			data, err := encodeJob(key, &j, sealed)
			if err != nil {
				return err
			}
			if err := putJobTx(tx, key, data, &j, old); err != nil {
				return err
			}
			out = append(out, &j)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: claim jobs: %w", err)
	}
	return out, nil
}

// heldJob reads the job id for an update by owner: ErrPreconditionFailed
// when it is gone or another owner holds it.
func (s *Store) heldJob(tx *bbolt.Tx, key []byte, owner string) (*store.Job, error) {
	old, _, err := s.storedJob(tx, key)
	switch {
	case err != nil:
		return nil, err
	case old == nil:
		return nil, fmt.Errorf("%w: job %q does not exist", store.ErrPreconditionFailed, key)
	case owner == "" || old.Owner != owner:
		return nil, fmt.Errorf("%w: job %q is not held by %q", store.ErrPreconditionFailed, key, owner)
	}
	return old, nil
}

// ReleaseJob ends job.Owner's lease and writes the job's progress.
func (s *Store) ReleaseJob(ctx context.Context, job *store.Job) error {
	done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: release job: %w", err)
	}
	defer done()
	if err := record.CheckJob(job); err != nil {
		return fmt.Errorf("store: release job: %w", err)
	}
	key := []byte(job.ID)
	owner := job.Owner
	sealed := s.sealJob(key, job)
	err = s.batch(func(tx *bbolt.Tx) error {
		old, err := s.heldJob(tx, key, owner)
		if err != nil {
			return err
		}
		j := *old
		j.Data, j.Secret, j.Attempts, j.NotBefore = job.Data, job.Secret, job.Attempts, job.NotBefore
		j.Owner, j.LeaseExpires = "", time.Time{}
		data, err := encodeJob(key, &j, sealed)
		if err != nil {
			return err
		}
		return putJobTx(tx, key, data, &j, old)
	})
	if err != nil {
		return fmt.Errorf("store: release job: %w", err)
	}
	return nil
}

// FinishJob records r (unless nil) and op and deletes the job owner holds,
// in one transaction.
func (s *Store) FinishJob(ctx context.Context, jobID, owner string, r *store.Registration, op *store.Operation) (*store.Registration, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: finish job: %w", err)
	}
	defer done()
	if err := record.CheckID("job id", jobID); err != nil {
		return nil, fmt.Errorf("store: finish job: %w", err)
	}
	if op == nil {
		return nil, fmt.Errorf("store: finish job: %w: nil operation", store.ErrInvalidRecord)
	}
	opKey, opData, opExp, err := encodeOperation(op)
	if err != nil {
		return nil, fmt.Errorf("store: finish job: %w", err)
	}
	var reg *preparedRegistration
	if r != nil {
		if reg, err = s.prepareRegistration(r); err != nil {
			return nil, fmt.Errorf("store: finish job: %w", err)
		}
	}
	key := []byte(jobID)
	err = s.batch(func(tx *bbolt.Tx) error {
		old, err := s.heldJob(tx, key, owner)
		if err != nil {
			return err
		}
		if reg != nil {
			if err := reg.writeTx(tx); err != nil {
				return err
			}
		}
		if err := putOperationTx(tx, opKey, opData, opExp); err != nil {
			return err
		}
		return deleteJobTx(tx, key, old)
	})
	if err != nil {
		return nil, fmt.Errorf("store: finish job: %w", err)
	}
	if reg == nil {
		return nil, nil
	}
	return reg.out, nil
}

// CountJobs returns the number of jobs, pending and leased.
func (s *Store) CountJobs(ctx context.Context) (int, error) {
	return s.count(ctx, bktCounts, bktJobs)
}

// voidLeases ends, at Open, every lease an earlier process left: this
// process holds the file alone, so no other holder is alive. Nothing is
// written when no job is leased.
func (s *Store) voidLeases() error {
	var leased int
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bktJobs)).ForEach(func(k, v []byte) error {
			var h struct {
				Owner string `json:"owner"`
			}
			if err := json.Unmarshal(v, &h); err != nil {
				return fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bktJobs, k, err)
			}
			if h.Owner != "" {
				leased++
			}
			return nil
		})
	})
	if err != nil || leased == 0 {
		return err
	}
	err = s.db.Update(func(tx *bbolt.Tx) error {
		type rewrite struct {
			key, sealed []byte
			old, new    *store.Job
		}
		var todo []rewrite
		err := tx.Bucket([]byte(bktJobs)).ForEach(func(k, v []byte) error {
			j, sealed, err := s.decodeJob(k, v)
			if err != nil {
				return err
			}
			if j.Owner != "" {
				n := *j
				n.Owner, n.LeaseExpires = "", time.Time{}
				todo = append(todo, rewrite{bytes.Clone(k), bytes.Clone(sealed), j, &n})
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range todo {
			data, err := encodeJob(r.key, r.new, r.sealed)
			if err != nil {
				return err
			}
			if err := putJobTx(tx, r.key, data, r.new, r.old); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: end the job leases of an earlier process: %w", err)
	}
	s.log.Info("store: jobs leased by an earlier process are due again", "path", s.path, "jobs", leased)
	return nil
}
