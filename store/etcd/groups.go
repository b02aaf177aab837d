package etcd

// Enrollment groups (g/<id>) and meta/groups: the number of groups, written
// with every group write, whose mod revision is GroupsRevision.

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

// groupRecord is the stored form of a Group.
type groupRecord struct {
	*store.Group
	Sealed []byte `json:"sealed,omitempty"`
}

func (s *Store) decodeGroup(id string, kv *mvccpb.KeyValue) (*store.Group, error) {
	rec := groupRecord{Group: &store.Group{}}
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", store.ErrCorrupt, s.rel(kv.Key), err)
	}
	if err := s.sealer.OpenAttestation([]byte(bktGroups), []byte(id), rec.Sealed, &rec.Group.Attestation); err != nil {
		return nil, err
	}
	rec.Group.ETag = etagOf(kv.ModRevision)
	return rec.Group, nil
}

// GetGroup returns the enrollment group or ErrNotFound.
func (s *Store) GetGroup(ctx context.Context, groupID string) (*store.Group, error) {
	return getRecord(ctx, s, "group", pfxGroup, "enrollmentGroupId", groupID, s.decodeGroup)
}

// groupsMeta reads meta/groups: the number of groups and the compare that
// pins it for a write.
func (s *Store) groupsMeta(ctx context.Context) (int, clientv3.Cmp, error) {
	key := s.k(keyGroups)
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return 0, clientv3.Cmp{}, wrapErr(err)
	}
	if len(resp.Kvs) == 0 {
		return 0, clientv3.Compare(clientv3.CreateRevision(key), "=", 0), nil
	}
	n, err := strconv.Atoi(string(resp.Kvs[0].Value))
	if err != nil || n < 0 {
		return 0, clientv3.Cmp{}, fmt.Errorf("%w: %s is %q", store.ErrCorrupt, keyGroups, resp.Kvs[0].Value)
	}
	return n, clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision), nil
}

// PutGroup creates or replaces an enrollment group (see store.Store for
// ifMatch). The group, the number of groups and so GroupsRevision change
// in one transaction that compares both, so concurrent creates never
// overshoot the group limit.
func (s *Store) PutGroup(ctx context.Context, g *store.Group, ifMatch string) (*store.Group, error) {
	return s.putGroup(ctx, g, ifMatch, false)
}

// putGroup is PutGroup; with keepTimes the record's own times are stored
// and the group limit does not apply (an import).
func (s *Store) putGroup(ctx context.Context, g *store.Group, ifMatch string, keepTimes bool) (*store.Group, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: put group: %w", err)
	}
	defer done()
	if g == nil {
		return nil, fmt.Errorf("store: put group: %w: nil group", store.ErrInvalidRecord)
	}
	key, err := record.Key("enrollmentGroupId", g.EnrollmentGroupID)
	if err != nil {
		return nil, fmt.Errorf("store: put group: %w", err)
	}
	out, err := record.Clone(g)
	if err != nil {
		return nil, fmt.Errorf("store: put group %q: %w", g.EnrollmentGroupID, err)
	}
	stored := new(store.Group)
	*stored = *out
	sealed, att, err := s.sealer.SealAttestation([]byte(bktGroups), []byte(key), out.Attestation)
	if err != nil {
		return nil, fmt.Errorf("store: put group %q: %w", g.EnrollmentGroupID, err)
	}
	stored.Attestation, stored.ETag = att, ""
	now := s.now().UTC()
	rel := pfxGroup + key
	rev, _, err := s.casWrite(ctx, rel, ifMatch, func(old *mvccpb.KeyValue) (casPlan, error) {
		n, cmp, err := s.groupsMeta(ctx)
		if err != nil {
			return casPlan{}, err
		}
		created := now
		if old == nil {
			if s.maxGroups > 0 && n >= s.maxGroups && !keepTimes {
				return casPlan{}, &store.LimitError{What: "enrollment groups", Limit: s.maxGroups}
			}
			n++
		} else {
			h, err := head(rel, old.Value)
			if err != nil {
				return casPlan{}, err
			}
			if !h.CreatedAt.IsZero() {
				created = h.CreatedAt
			}
		}
		updated := now
		if keepTimes {
			created, updated = g.CreatedAt.UTC(), g.UpdatedAt.UTC()
		}
		stored.CreatedAt, stored.UpdatedAt = created, updated
		out.CreatedAt, out.UpdatedAt = created, updated
		data, err := json.Marshal(groupRecord{Group: stored, Sealed: sealed})
		if err != nil {
			return casPlan{}, fmt.Errorf("%w: group %q: %w", store.ErrInvalidRecord, key, err)
		}
		return casPlan{cmps: []clientv3.Cmp{cmp}, ops: []clientv3.Op{
			clientv3.OpPut(s.k(rel), string(data)),
			clientv3.OpPut(s.k(keyGroups), strconv.Itoa(n)),
		}}, nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: put group: %w", err)
	}
	out.ETag = etagOf(rev)
	return out, nil
}

// DeleteGroup deletes an enrollment group. Its registration records stay
// (and stay listed under the group) until deleted themselves.
func (s *Store) DeleteGroup(ctx context.Context, groupID, ifMatch string) error {
	return s.deleteRecord(ctx, "group", pfxGroup, "enrollmentGroupId", groupID, ifMatch, func(ctx context.Context, _ string, _ *mvccpb.KeyValue) (casPlan, error) {
		n, cmp, err := s.groupsMeta(ctx)
		if err != nil {
			return casPlan{}, err
		}
		return casPlan{cmps: []clientv3.Cmp{cmp}, ops: []clientv3.Op{clientv3.OpPut(s.k(keyGroups), strconv.Itoa(max(n-1, 0)))}}, nil
	})
}

// GroupsRevision returns the mod revision of meta/groups: 0 before the
// first group write of this prefix, then the etcd revision of the latest
// PutGroup or DeleteGroup. One read of one key.
func (s *Store) GroupsRevision(ctx context.Context) (uint64, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: groups revision: %w", err)
	}
	defer done()
	resp, err := s.cli.Get(ctx, s.k(keyGroups), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("store: groups revision: %w", wrapErr(err))
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return uint64(resp.Kvs[0].ModRevision), nil
}

// ListGroups returns one page of enrollment groups in key order.
func (s *Store) ListGroups(ctx context.Context, q store.Query) (store.Page[*store.Group], error) {
	return listRecords(ctx, s, "groups", 'g', pfxGroup, q, s.decodeGroup)
}

// CountGroups returns the number of enrollment groups.
func (s *Store) CountGroups(ctx context.Context) (int, error) {
	return s.count(ctx, "groups", pfxGroup)
}
