package etcd

// Individual enrollments (e/<id>) and the endorsement key index (ek/).

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

// enrollmentRecord is the stored form of an Enrollment: the record with its
// symmetric keys blanked, plus the sealed keys (the bbolt engine's form;
// the etag is the key's mod revision and is not stored).
type enrollmentRecord struct {
	*store.Enrollment
	Sealed []byte `json:"sealed,omitempty"`
}

// recordHead is the part of a stored record that writes need.
type recordHead struct {
	CreatedAt         time.Time `json:"createdDateTimeUtc"`
	EnrollmentGroupID string    `json:"enrollmentGroupId"`
	Attestation       *struct {
		Type string                `json:"type"`
		TPM  *store.TPMAttestation `json:"tpm"`
	} `json:"attestation"`
}

// head decodes the head of a stored value.
func head(rel string, v []byte) (recordHead, error) {
	var h recordHead
	if err := json.Unmarshal(v, &h); err != nil {
		return h, fmt.Errorf("%w: %s: %w", store.ErrCorrupt, rel, err)
	}
	return h, nil
}

// ek is the endorsement key the head's attestation names if it is a TPM one.
func (h recordHead) ek() string {
	if h.Attestation == nil || h.Attestation.Type != store.AttestationTPM || h.Attestation.TPM == nil {
		return ""
	}
	return h.Attestation.TPM.EndorsementKey
}

// enrollmentEK is the endorsement key of a TPM enrollment; "" for other types.
func enrollmentEK(a *store.Attestation) string {
	if a.Type != store.AttestationTPM || a.TPM == nil {
		return ""
	}
	return a.TPM.EndorsementKey
}

func (s *Store) decodeEnrollment(id string, kv *mvccpb.KeyValue) (*store.Enrollment, error) {
	rec := enrollmentRecord{Enrollment: &store.Enrollment{}}
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", store.ErrCorrupt, s.rel(kv.Key), err)
	}
	if err := s.sealer.OpenAttestation([]byte(bktEnrollments), []byte(id), rec.Sealed, &rec.Enrollment.Attestation); err != nil {
		return nil, err
	}
	rec.Enrollment.ETag = etagOf(kv.ModRevision)
	return rec.Enrollment, nil
}

// GetEnrollment returns the enrollment or ErrNotFound.
func (s *Store) GetEnrollment(ctx context.Context, registrationID string) (*store.Enrollment, error) {
	return getRecord(ctx, s, "enrollment", pfxEnroll, "registrationId", registrationID, s.decodeEnrollment)
}

// PutEnrollment creates or replaces an enrollment (see store.Store for
// ifMatch) and moves its endorsement key index entry in the same
// transaction.
func (s *Store) PutEnrollment(ctx context.Context, e *store.Enrollment, ifMatch string) (*store.Enrollment, error) {
	return s.putEnrollment(ctx, e, ifMatch, false)
}

// putEnrollment is PutEnrollment; with keepTimes the record's own
// creation and update times are stored (an import).
func (s *Store) putEnrollment(ctx context.Context, e *store.Enrollment, ifMatch string, keepTimes bool) (*store.Enrollment, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: put enrollment: %w", err)
	}
	defer done()
	if e == nil {
		return nil, fmt.Errorf("store: put enrollment: %w: nil enrollment", store.ErrInvalidRecord)
	}
	key, err := record.Key("registrationId", e.RegistrationID)
	if err != nil {
		return nil, fmt.Errorf("store: put enrollment: %w", err)
	}
	out, err := record.Clone(e)
	if err != nil {
		return nil, fmt.Errorf("store: put enrollment %q: %w", e.RegistrationID, err)
	}
	stored := new(store.Enrollment)
	*stored = *out
	sealed, att, err := s.sealer.SealAttestation([]byte(bktEnrollments), []byte(key), out.Attestation)
	if err != nil {
		return nil, fmt.Errorf("store: put enrollment %q: %w", e.RegistrationID, err)
	}
	stored.Attestation, stored.ETag = att, ""
	newEK := enrollmentEK(&stored.Attestation)
	now := s.now().UTC()
	rel := pfxEnroll + key
	rev, _, err := s.casWrite(ctx, rel, ifMatch, func(old *mvccpb.KeyValue) (casPlan, error) {
		created, oldEK := now, ""
		if old != nil {
			h, err := head(rel, old.Value)
			if err != nil {
				return casPlan{}, err
			}
			if !h.CreatedAt.IsZero() {
				created = h.CreatedAt
			}
			oldEK = h.ek()
		}
		updated := now
		if keepTimes {
			created, updated = e.CreatedAt.UTC(), e.UpdatedAt.UTC()
		}
		stored.CreatedAt, stored.UpdatedAt = created, updated
		out.CreatedAt, out.UpdatedAt = created, updated
		data, err := json.Marshal(enrollmentRecord{Enrollment: stored, Sealed: sealed})
		if err != nil {
			return casPlan{}, fmt.Errorf("%w: enrollment %q: %w", store.ErrInvalidRecord, key, err)
		}
		p := casPlan{ops: []clientv3.Op{clientv3.OpPut(s.k(rel), string(data))}}
		p.ops = append(p.ops, s.reindexEK(key, oldEK, newEK)...)
		return p, nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: put enrollment: %w", err)
	}
	out.ETag = etagOf(rev)
	return out, nil
}

// reindexEK returns the writes that move the index entry of enrollment key
// from oldEK to newEK (either may be ""; the same key in two spellings is
// one entry).
func (s *Store) reindexEK(key, oldEK, newEK string) []clientv3.Op {
	var ops []clientv3.Op
	oldK, newK := "", ""
	if oldEK != "" {
		oldK = ekKey(oldEK, key)
	}
	if newEK != "" {
		newK = ekKey(newEK, key)
	}
	if oldK == newK {
		return nil
	}
	if oldK != "" {
		ops = append(ops, clientv3.OpDelete(s.k(oldK)))
	}
	if newK != "" {
		ops = append(ops, clientv3.OpPut(s.k(newK), ""))
	}
	return ops
}

// DeleteEnrollment deletes an enrollment and its index entry: ErrNotFound
// if absent, ErrPreconditionFailed if ifMatch names another etag.
func (s *Store) DeleteEnrollment(ctx context.Context, registrationID, ifMatch string) error {
	return s.deleteRecord(ctx, "enrollment", pfxEnroll, "registrationId", registrationID, ifMatch, func(_ context.Context, key string, old *mvccpb.KeyValue) (casPlan, error) {
		h, err := head(pfxEnroll+key, old.Value)
		if err != nil {
			return casPlan{}, err
		}
		return casPlan{ops: s.reindexEK(key, h.ek(), "")}, nil
	})
}

// ListEnrollments returns one page of enrollments in key order.
func (s *Store) ListEnrollments(ctx context.Context, q store.Query) (store.Page[*store.Enrollment], error) {
	return listRecords(ctx, s, "enrollments", 'e', pfxEnroll, q, s.decodeEnrollment)
}

// CountEnrollments returns the number of enrollments.
func (s *Store) CountEnrollments(ctx context.Context) (int, error) {
	return s.count(ctx, "enrollments", pfxEnroll)
}

// EnrollmentIDsByEK returns the lowercased registration ids, in order, of
// the TPM enrollments whose endorsement key decodes to the same bytes as
// ek: one range read of the index, keys only.
func (s *Store) EnrollmentIDsByEK(ctx context.Context, ek string) ([]string, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: enrollments by endorsement key: %w", err)
	}
	defer done()
	if ek == "" {
		return nil, nil
	}
	pfx := pfxEK + ekHash(ek) + "/"
	resp, err := s.cli.Get(ctx, s.k(pfx), clientv3.WithRange(s.k(prefixEnd(pfx))), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("store: enrollments by endorsement key: %w", wrapErr(err))
	}
	var ids []string
	for _, kv := range resp.Kvs {
		ids = append(ids, strings.TrimPrefix(s.rel(kv.Key), pfx))
	}
	return ids, nil
}
