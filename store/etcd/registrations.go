package etcd

// Registration records (r/<id>) with the group index (gr/<group> 0x00 <id>)
// kept in the same transaction.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

func (s *Store) decodeRegistration(id string, kv *mvccpb.KeyValue) (*store.Registration, error) {
	rec := record.Registration{Registration: &store.Registration{}}
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", store.ErrCorrupt, s.rel(kv.Key), err)
	}
	if rec.Sealed != nil {
		hk, err := s.sealer.Open([]byte(bktRegistrations), []byte(id), rec.Sealed)
		if err != nil {
			return nil, err
		}
		rec.Registration.HubKey = hk
	}
	rec.Registration.AttestationHash = rec.AttHash
	rec.Registration.ETag = etagOf(kv.ModRevision)
	return rec.Registration, nil
}

// GetRegistration returns the registration record (HubKey decrypted) or ErrNotFound.
func (s *Store) GetRegistration(ctx context.Context, registrationID string) (*store.Registration, error) {
	return getRecord(ctx, s, "registration", pfxReg, "registrationId", registrationID, s.decodeRegistration)
}

// DeleteRegistration deletes a registration record and its group index entry.
func (s *Store) DeleteRegistration(ctx context.Context, registrationID, ifMatch string) error {
	return s.deleteRecord(ctx, "registration", pfxReg, "registrationId", registrationID, ifMatch, func(_ context.Context, key string, old *mvccpb.KeyValue) (casPlan, error) {
		h, err := head(pfxReg+key, old.Value)
		if err != nil {
			return casPlan{}, err
		}
		if g := record.Lower(h.EnrollmentGroupID); g != "" {
			return casPlan{ops: []clientv3.Op{clientv3.OpDelete(s.k(groupRegKey(g, key)))}}, nil
		}
		return casPlan{}, nil
	})
}

// ListGroupRegistrations returns one page of the registrations of a group,
// in registration id order: a page of the group index, then the records it
// names, read at the same revision.
func (s *Store) ListGroupRegistrations(ctx context.Context, groupID string, q store.Query) (store.Page[*store.Registration], error) {
	var page store.Page[*store.Registration]
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return page, fmt.Errorf("store: list group registrations: %w", err)
	}
	defer done()
	g, err := record.Key("enrollmentGroupId", groupID)
	if err != nil {
		return page, fmt.Errorf("store: list group registrations: %w", err)
	}
	pfx := groupRegKey(g, "")
	kvs, tok, rev, err := s.listKeys(ctx, 'r', pfx, q, true, 0)
	if err != nil {
		return page, fmt.Errorf("store: list group registrations: %w", err)
	}
	ids := make([]string, len(kvs))
	for i, kv := range kvs {
		ids[i] = strings.TrimPrefix(s.rel(kv.Key), pfx)
	}
	const perTxn = 100 // read-only txn ops, below etcd's 128
	for len(ids) > 0 {
		n := min(len(ids), perTxn)
		ops := make([]clientv3.Op, n)
		for i, id := range ids[:n] {
			ops[i] = clientv3.OpGet(s.k(pfxReg+id), clientv3.WithRev(rev))
		}
		tr, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return store.Page[*store.Registration]{}, fmt.Errorf("store: list group registrations: %w", wrapErr(err))
		}
		for i, r := range tr.Responses {
			rkvs := r.GetResponseRange().Kvs
			if len(rkvs) != 1 {
				return store.Page[*store.Registration]{}, fmt.Errorf("store: list group registrations: %w: %s points at a missing registration",
					store.ErrCorrupt, groupRegKey(g, ids[i]))
			}
			reg, err := s.decodeRegistration(ids[i], rkvs[0])
			if err != nil {
				return store.Page[*store.Registration]{}, fmt.Errorf("store: list group registrations: %w", err)
			}
			page.Items = append(page.Items, reg)
		}
		ids = ids[n:]
	}
	page.Continuation = tok
	return page, nil
}

// CountGroupRegistrations returns the number of registrations of a group.
func (s *Store) CountGroupRegistrations(ctx context.Context, groupID string) (int, error) {
	g, err := record.Key("enrollmentGroupId", groupID)
	if err != nil {
		return 0, fmt.Errorf("store: count group registrations: %w", err)
	}
	return s.count(ctx, "group registrations", groupRegKey(g, ""))
}

// RecordRegistration writes the registration (new etag and times, created
// time preserved), keeps the group index right, and writes op (if not nil,
// leased until its expiry) in the same transaction. It returns the
// registration as stored.
func (s *Store) RecordRegistration(ctx context.Context, r *store.Registration, op *store.Operation) (*store.Registration, error) {
	return s.recordRegistration(ctx, r, op, false, nil)
}

// recordRegistration is RecordRegistration; with keepTimes the record's
// own times are stored (an import). extra, unless nil, adds compares and
// writes to the transaction, read again with every attempt (FinishJob:
// the job's end).
func (s *Store) recordRegistration(ctx context.Context, r *store.Registration, op *store.Operation, keepTimes bool, extra func(context.Context) (casPlan, error)) (*store.Registration, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: record registration: %w", err)
	}
	defer done()
	if r == nil {
		return nil, fmt.Errorf("store: record registration: %w: nil registration", store.ErrInvalidRecord)
	}
	key, err := record.Key("registrationId", r.RegistrationID)
	if err != nil {
		return nil, fmt.Errorf("store: record registration: %w", err)
	}
	hubKey, attHash := bytes.Clone(r.HubKey), bytes.Clone(r.AttestationHash)
	tmp := *r
	tmp.HubKey, tmp.AttestationHash = nil, nil
	out, err := record.Clone(&tmp)
	if err != nil {
		return nil, fmt.Errorf("store: record registration %q: %w", r.RegistrationID, err)
	}
	stored := new(store.Registration)
	*stored = *out
	stored.ETag = ""
	out.HubKey, out.AttestationHash = hubKey, attHash
	var sealed []byte
	if len(hubKey) > 0 {
		sealed = s.sealer.Seal([]byte(bktRegistrations), []byte(key), hubKey)
	}
	var opData []byte
	if op != nil {
		if opData, err = encodeOperation(op); err != nil {
			return nil, fmt.Errorf("store: record registration %q: %w", r.RegistrationID, err)
		}
	}
	newGroup := record.Lower(r.EnrollmentGroupID)
	now := s.now().UTC()
	rel := pfxReg + key
	for attempt := 0; ; attempt++ {
		var opOps []clientv3.Op
		var lease clientv3.LeaseID
		if op != nil {
			if lease, err = s.leases.get(ctx, op.ExpiresAt); err != nil {
				return nil, fmt.Errorf("store: record registration: %w", err)
			}
			opOps = s.operationOps(op, opData, lease)
		}
		rev, _, err := s.casWrite(ctx, rel, "", func(old *mvccpb.KeyValue) (casPlan, error) {
			created, oldGroup := now, ""
			if old != nil {
				h, err := head(rel, old.Value)
				if err != nil {
					return casPlan{}, err
				}
				if !h.CreatedAt.IsZero() {
					created = h.CreatedAt
				}
				oldGroup = record.Lower(h.EnrollmentGroupID)
			}
			updated := now
			if keepTimes {
				created, updated = r.CreatedAt.UTC(), r.UpdatedAt.UTC()
			}
			stored.CreatedAt, stored.UpdatedAt = created, updated
			out.CreatedAt, out.UpdatedAt = created, updated
			data, err := json.Marshal(record.Registration{Registration: stored, Sealed: sealed, AttHash: attHash})
			if err != nil {
				return casPlan{}, fmt.Errorf("%w: registration %q: %w", store.ErrInvalidRecord, key, err)
			}
			ops := []clientv3.Op{clientv3.OpPut(s.k(rel), string(data))}
			if old == nil || oldGroup != newGroup {
				if old != nil && oldGroup != "" {
					ops = append(ops, clientv3.OpDelete(s.k(groupRegKey(oldGroup, key))))
				}
				if newGroup != "" {
					ops = append(ops, clientv3.OpPut(s.k(groupRegKey(newGroup, key)), ""))
				}
			}
			p := casPlan{ops: append(ops, opOps...)}
			if extra != nil {
				x, err := extra(ctx)
				if err != nil {
					return casPlan{}, err
				}
				p.cmps, p.ops = append(p.cmps, x.cmps...), append(p.ops, x.ops...)
			}
			return p, nil
		})
		if err != nil && errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt < 3 {
			s.leases.drop(lease)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("store: record registration: %w", err)
		}
		out.ETag = etagOf(rev)
		return out, nil
	}
}
