package bolt

// Enrollment groups: bucket groups, keyed by record.Lower(enrollmentGroupId), and
// meta/groupsrev, bumped with every group write.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

// groupRecord is the stored form of a Group.
type groupRecord struct {
	*store.Group
	Sealed []byte `json:"sealed,omitempty"`
}

func (s *Store) decodeGroup(key, v []byte) (*store.Group, error) {
	rec := groupRecord{Group: &store.Group{}}
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bktGroups, key, err)
	}
	if err := s.openAttestation([]byte(bktGroups), key, rec.Sealed, &rec.Group.Attestation); err != nil {
		return nil, err
	}
	return rec.Group, nil
}

// GetGroup returns the enrollment group or ErrNotFound.
func (s *Store) GetGroup(ctx context.Context, groupID string) (*store.Group, error) {
	return getRecord(ctx, s, "group", bktGroups, "enrollmentGroupId", groupID, s.decodeGroup)
}

// PutGroup creates or replaces an enrollment group (see Store for ifMatch).
func (s *Store) PutGroup(ctx context.Context, g *store.Group, ifMatch string) (*store.Group, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: put group: %w", err)
	}
	defer done()
	if g == nil {
		return nil, fmt.Errorf("store: put group: %w: nil group", store.ErrInvalidRecord)
	}
	key, err := normKey("enrollmentGroupId", g.EnrollmentGroupID)
	if err != nil {
		return nil, fmt.Errorf("store: put group: %w", err)
	}
	out, err := record.Clone(g)
	if err != nil {
		return nil, fmt.Errorf("store: put group %q: %w", g.EnrollmentGroupID, err)
	}
	stored := new(store.Group)
	*stored = *out
	sealed, att, err := s.sealAttestation([]byte(bktGroups), key, out.Attestation)
	if err != nil {
		return nil, err
	}
	stored.Attestation = att
	etag, now := newETag(), s.now().UTC()
	err = s.batch(func(tx *bbolt.Tx) error {
		if s.maxGroups > 0 && tx.Bucket([]byte(bktGroups)).Get(key) == nil &&
			readCount(tx.Bucket([]byte(bktCounts)), []byte(bktGroups)) >= s.maxGroups {
			if _, err := precondition(bktGroups, key, nil, ifMatch); err != nil {
				return err // an etag for a missing group: that answer first
			}
			return &store.LimitError{What: "enrollment groups", Limit: s.maxGroups}
		}
		err := putRecordTx(tx, bktGroups, key, ifMatch, now, func(created time.Time) ([]byte, error) {
			stored.ETag, stored.CreatedAt, stored.UpdatedAt = etag, created, now
			out.ETag, out.CreatedAt, out.UpdatedAt = etag, created, now
			return json.Marshal(groupRecord{Group: stored, Sealed: sealed})
		})
		if err != nil {
			return err
		}
		return bumpGroupsRevision(tx)
	})
	if err != nil {
		return nil, fmt.Errorf("store: put group: %w", err)
	}
	return out, nil
}

// DeleteGroup deletes an enrollment group. Its registration records stay
// (and stay listed under the group) until deleted themselves.
func (s *Store) DeleteGroup(ctx context.Context, groupID, ifMatch string) error {
	done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: delete group: %w", err)
	}
	defer done()
	err = s.deleteRecord(bktGroups, "enrollmentGroupId", groupID, ifMatch, func(tx *bbolt.Tx, _, _ []byte, _ recordHead) error {
		return bumpGroupsRevision(tx)
	})
	if err != nil {
		return fmt.Errorf("store: delete group: %w", err)
	}
	return nil
}

// bumpGroupsRevision adds one to meta/groupsrev inside a group write.
func bumpGroupsRevision(tx *bbolt.Tx) error {
	meta := tx.Bucket([]byte(bktMeta))
	var rev uint64
	if v := meta.Get([]byte(metaGroupsRev)); len(v) == 8 {
		rev = binary.BigEndian.Uint64(v)
	}
	return meta.Put([]byte(metaGroupsRev), u64(rev+1))
}

// GroupsRevision returns meta/groupsrev: 0 until the first group write of
// this file, then one more with every PutGroup and DeleteGroup. One read of
// one key: cheap enough for every CONNECT that tries the groups.
func (s *Store) GroupsRevision(ctx context.Context) (uint64, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: groups revision: %w", err)
	}
	defer done()
	var rev uint64
	err = s.db.View(func(tx *bbolt.Tx) error {
		switch v := tx.Bucket([]byte(bktMeta)).Get([]byte(metaGroupsRev)); len(v) {
		case 0:
		case 8:
			rev = binary.BigEndian.Uint64(v)
		default:
			return fmt.Errorf("%w: %s/%s is %d bytes, want 8", store.ErrCorrupt, bktMeta, metaGroupsRev, len(v))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: groups revision: %w", err)
	}
	return rev, nil
}

// ListGroups returns one page of enrollment groups in key order.
func (s *Store) ListGroups(ctx context.Context, q store.Query) (store.Page[*store.Group], error) {
	return listRecords(ctx, s, "groups", bktGroups, 'g', q, s.decodeGroup)
}

// CountGroups returns the number of enrollment groups.
func (s *Store) CountGroups(ctx context.Context) (int, error) {
	return s.count(ctx, bktCounts, bktGroups)
}
