package bolt

// Registration records: bucket registrations, keyed by record.Lower(registrationId),
// with the group index (groupregs, groupcounts) kept in the same transaction.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

// cloneRegistration returns what record.Clone(r) returns (a deep copy without
// HubKey and AttestationHash, Payload validated and compacted as json.Marshal writes it) without
// encoding and decoding the whole record: RecordRegistration runs for every
// device registration, and the round trip was a quarter of its CPU time
// (BenchmarkRecordRegistration, 256 writers). The round trip changes only
// strings that are not valid UTF-8 (to U+FFFD) and times, which the write
// replaces; a record with such a string takes the round trip.
func cloneRegistration(r *store.Registration) (*store.Registration, error) {
	for _, f := range [...]string{r.RegistrationID, r.Status, r.Substatus, r.AssignedHub, r.DeviceID,
		r.ErrorMessage, r.AttestationType, r.EnrollmentGroupID, r.ETag} {
		if !utf8.ValidString(f) {
			return record.Clone(r)
		}
	}
	if c := r.Certificate; c != nil {
		for _, f := range [...]string{c.SubjectName, c.SHA1Thumbprint, c.SHA256Thumbprint, c.IssuerName, c.SerialNumber} {
			if !utf8.ValidString(f) {
				return record.Clone(r)
			}
		}
	}
	for _, sc := range r.SupersededCertificates {
		if !utf8.ValidString(sc.SerialNumber) || !utf8.ValidString(sc.SHA256Thumbprint) {
			return record.Clone(r)
		}
	}
	out := new(store.Registration)
	*out = *r
	out.HubKey, out.AttestationHash = nil, nil
	if r.Certificate != nil {
		c := *r.Certificate
		c.NotBefore, c.NotAfter = c.NotBefore.Round(0), c.NotAfter.Round(0) // the round trip drops monotonic readings
		out.Certificate = &c
	}
	if len(r.SupersededCertificates) > 0 {
		out.SupersededCertificates = make([]store.SupersededCertificate, len(r.SupersededCertificates))
		for i, sc := range r.SupersededCertificates {
			sc.NotAfter, sc.SupersededAt = sc.NotAfter.Round(0), sc.SupersededAt.Round(0)
			out.SupersededCertificates[i] = sc
		}
	} else {
		out.SupersededCertificates = nil // omitempty: the round trip drops an empty list
	}
	if len(r.Payload) == 0 {
		out.Payload = nil // omitempty: the round trip drops it
		return out, nil
	}
	p, err := json.Marshal(r.Payload) // validates, compacts and escapes as the record's encoding does
	if err != nil {
		return nil, fmt.Errorf("%w: %w", store.ErrInvalidRecord, err)
	}
	out.Payload = p
	return out, nil
}

func (s *Store) decodeRegistration(key, v []byte) (*store.Registration, error) {
	rec := record.Registration{Registration: &store.Registration{}}
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bktRegistrations, key, err)
	}
	if rec.Sealed != nil {
		hk, err := s.open([]byte(bktRegistrations), key, rec.Sealed)
		if err != nil {
			return nil, err
		}
		rec.Registration.HubKey = hk
	}
	rec.Registration.AttestationHash = rec.AttHash
	return rec.Registration, nil
}

// GetRegistration returns the registration record (HubKey decrypted) or ErrNotFound.
func (s *Store) GetRegistration(ctx context.Context, registrationID string) (*store.Registration, error) {
	return getRecord(ctx, s, "registration", bktRegistrations, "registrationId", registrationID, s.decodeRegistration)
}

// unindexRegistration removes a registration from its group's index.
func unindexRegistration(tx *bbolt.Tx, key []byte, group string) error {
	if group == "" {
		return nil
	}
	g := []byte(record.Lower(group))
	if err := tx.Bucket([]byte(bktGroupRegs)).Delete(groupRegKey(g, key)); err != nil {
		return err
	}
	return addCount(tx.Bucket([]byte(bktGroupCounts)), g, -1)
}

// DeleteRegistration deletes a registration record and its group index entry.
func (s *Store) DeleteRegistration(ctx context.Context, registrationID, ifMatch string) error {
	done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: delete registration: %w", err)
	}
	defer done()
	err = s.deleteRecord(bktRegistrations, "registrationId", registrationID, ifMatch, func(tx *bbolt.Tx, key, _ []byte, h recordHead) error {
		return unindexRegistration(tx, key, h.EnrollmentGroupID)
	})
	if err != nil {
		return fmt.Errorf("store: delete registration: %w", err)
	}
	return nil
}

// ListGroupRegistrations returns one page of the registrations of a group,
// in registration id order.
func (s *Store) ListGroupRegistrations(ctx context.Context, groupID string, q store.Query) (store.Page[*store.Registration], error) {
	var page store.Page[*store.Registration]
	done, err := s.enter(ctx)
	if err != nil {
		return page, fmt.Errorf("store: list group registrations: %w", err)
	}
	defer done()
	g, err := normKey("enrollmentGroupId", groupID)
	if err != nil {
		return page, fmt.Errorf("store: list group registrations: %w", err)
	}
	prefix := groupRegKey(g, nil)
	err = s.db.View(func(tx *bbolt.Tx) error {
		regs := tx.Bucket([]byte(bktRegistrations))
		var err error
		page.Continuation, err = listBucket(tx.Bucket([]byte(bktGroupRegs)), 'r', prefix, q, func(k, _ []byte) error {
			key := k[len(prefix):]
			v := regs.Get(key)
			if v == nil {
				return fmt.Errorf("%w: %s/%q points at a missing registration", store.ErrCorrupt, bktGroupRegs, k)
			}
			r, err := s.decodeRegistration(key, v)
			page.Items = append(page.Items, r)
			return err
		})
		return err
	})
	if err != nil {
		return store.Page[*store.Registration]{}, fmt.Errorf("store: list group registrations: %w", err)
	}
	return page, nil
}

// CountGroupRegistrations returns the number of registrations of a group.
func (s *Store) CountGroupRegistrations(ctx context.Context, groupID string) (int, error) {
	g, err := normKey("enrollmentGroupId", groupID)
	if err != nil {
		return 0, fmt.Errorf("store: count group registrations: %w", err)
	}
	return s.count(ctx, bktGroupCounts, string(g))
}

// RecordRegistration writes the registration (new etag and times, created
// time preserved), keeps the group index right (also when the registration
// moves to another group), and writes op (if not nil) in the same durable
// transaction. It returns the registration as stored.
func (s *Store) RecordRegistration(ctx context.Context, r *store.Registration, op *store.Operation) (*store.Registration, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: record registration: %w", err)
	}
	defer done()
	reg, err := s.prepareRegistration(r)
	if err != nil {
		return nil, fmt.Errorf("store: record registration: %w", err)
	}
	var opKey, opData []byte
	var opExp time.Time
	if op != nil {
		if opKey, opData, opExp, err = encodeOperation(op); err != nil {
			return nil, fmt.Errorf("store: record registration %q: %w", r.RegistrationID, err)
		}
	}
	err = s.batch(func(tx *bbolt.Tx) error {
		if err := reg.writeTx(tx); err != nil {
			return err
		}
		if op != nil {
			return putOperationTx(tx, opKey, opData, opExp)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: record registration: %w", err)
	}
	return reg.out, nil
}

// preparedRegistration is a registration record ready to be written: what
// can be computed before the write transaction (the copy, the sealed hub
// key, the etag and time) is, so that writeTx may run more than once.
type preparedRegistration struct {
	key      []byte
	out      *store.Registration // what the write returns (HubKey, AttestationHash)
	stored   *store.Registration // what is stored (without them)
	sealed   []byte
	newGroup string
	etag     string
	now      time.Time
}

// prepareRegistration validates and copies r for a write.
func (s *Store) prepareRegistration(r *store.Registration) (*preparedRegistration, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: nil registration", store.ErrInvalidRecord)
	}
	key, err := normKey("registrationId", r.RegistrationID)
	if err != nil {
		return nil, err
	}
	out, err := cloneRegistration(r)
	if err != nil {
		return nil, fmt.Errorf("registration %q: %w", r.RegistrationID, err)
	}
	out.HubKey = bytes.Clone(r.HubKey)
	out.AttestationHash = bytes.Clone(r.AttestationHash)
	stored := new(store.Registration)
	*stored = *out
	stored.HubKey, stored.AttestationHash = nil, nil
	p := &preparedRegistration{key: key, out: out, stored: stored, newGroup: record.Lower(r.EnrollmentGroupID),
		etag: newETag(), now: s.now().UTC()}
	if len(r.HubKey) > 0 {
		p.sealed = s.seal([]byte(bktRegistrations), key, r.HubKey)
	}
	return p, nil
}

// writeTx writes the prepared registration inside tx: the record (created
// time preserved), the counter and the group index.
func (p *preparedRegistration) writeTx(tx *bbolt.Tx) error {
	key, stored, out, now := p.key, p.stored, p.out, p.now
	b := tx.Bucket([]byte(bktRegistrations))
	old := b.Get(key)
	h, err := precondition(bktRegistrations, key, old, "")
	if err != nil {
		return err
	}
	created := now
	if old != nil && !h.CreatedAt.IsZero() {
		created = h.CreatedAt
	}
	stored.ETag, stored.CreatedAt, stored.UpdatedAt = p.etag, created, now
	out.ETag, out.CreatedAt, out.UpdatedAt = p.etag, created, now
	data, err := json.Marshal(record.Registration{Registration: stored, Sealed: p.sealed, AttHash: out.AttestationHash})
	if err != nil {
		return fmt.Errorf("%w: registration %q: %w", store.ErrInvalidRecord, key, err)
	}
	if old == nil {
		if err := addCount(tx.Bucket([]byte(bktCounts)), []byte(bktRegistrations), 1); err != nil {
			return err
		}
	}
	if err := b.Put(key, data); err != nil {
		return err
	}
	if oldGroup := record.Lower(h.EnrollmentGroupID); old == nil || oldGroup != p.newGroup {
		if old != nil {
			if err := unindexRegistration(tx, key, oldGroup); err != nil {
				return err
			}
		}
		if p.newGroup != "" {
			if err := tx.Bucket([]byte(bktGroupRegs)).Put(groupRegKey([]byte(p.newGroup), key), []byte{}); err != nil {
				return err
			}
			if err := addCount(tx.Bucket([]byte(bktGroupCounts)), []byte(p.newGroup), 1); err != nil {
				return err
			}
		}
	}
	return nil
}
