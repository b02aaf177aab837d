package store

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
)

// recordHead is the part of a stored record that writes need: the etag for
// If-Match, the creation time to preserve, and (registrations) the group.
type recordHead struct {
	ETag              string    `json:"etag"`
	CreatedAt         time.Time `json:"createdDateTimeUtc"`
	EnrollmentGroupID string    `json:"enrollmentGroupId"`
}

// enrollmentRecord is the stored form of an Enrollment: the record with its
// symmetric keys blanked, plus the sealed keys.
type enrollmentRecord struct {
	*Enrollment
	Sealed []byte `json:"sealed,omitempty"`
}

// groupRecord is the stored form of a Group.
type groupRecord struct {
	*Group
	Sealed []byte `json:"sealed,omitempty"`
}

// registrationRecord is the stored form of a Registration: HubKey sealed,
// AttestationHash (a hash, not a secret) beside it.
type registrationRecord struct {
	*Registration
	Sealed  []byte `json:"sealed,omitempty"`
	AttHash []byte `json:"attestationHash,omitempty"`
}

// symmetricSecrets is the plaintext sealed for a symmetric-key attestation.
type symmetricSecrets struct {
	Primary   string `json:"p,omitempty"`
	Secondary string `json:"s,omitempty"`
}

// lower is the key normalisation of registration and group ids.
func lower(id string) string { return strings.ToLower(id) }

// checkID validates an id used as a key.
func checkID(what, id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty %s", ErrInvalidID, what)
	case len(id) > MaxIDLength:
		return fmt.Errorf("%w: %s is %d bytes, the limit is %d", ErrInvalidID, what, len(id), MaxIDLength)
	case strings.IndexByte(id, 0) >= 0:
		return fmt.Errorf("%w: %s contains a NUL byte", ErrInvalidID, what)
	}
	return nil
}

// normKey validates and lowercases a registration or group id.
func normKey(what, id string) ([]byte, error) {
	if err := checkID(what, id); err != nil {
		return nil, err
	}
	return []byte(lower(id)), nil
}

// normETag accepts an HTTP-style quoted etag as well as the bare form.
func normETag(ifMatch string) string {
	ifMatch = strings.TrimSpace(ifMatch)
	ifMatch = strings.TrimPrefix(ifMatch, "W/")
	if len(ifMatch) >= 2 && ifMatch[0] == '"' && ifMatch[len(ifMatch)-1] == '"' {
		ifMatch = ifMatch[1 : len(ifMatch)-1]
	}
	return ifMatch
}

// precondition applies ifMatch to the stored value old (nil if absent) and
// returns its head.
func precondition(bucket string, key, old []byte, ifMatch string) (recordHead, error) {
	var h recordHead
	if old != nil {
		if err := json.Unmarshal(old, &h); err != nil {
			return h, fmt.Errorf("%w: %s/%q: %w", ErrCorrupt, bucket, key, err)
		}
	}
	m := normETag(ifMatch)
	if m == "" || m == "*" {
		return h, nil
	}
	if old == nil {
		return h, fmt.Errorf("%w: %s %q does not exist", ErrPreconditionFailed, strings.TrimSuffix(bucket, "s"), key)
	}
	if h.ETag != m {
		return h, fmt.Errorf("%w: %s %q has another etag", ErrPreconditionFailed, strings.TrimSuffix(bucket, "s"), key)
	}
	return h, nil
}

// isOutcome reports errors that are answers, not failures: a batch function
// returns them only before writing anything, so the batch need not roll back.
func isOutcome(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrPreconditionFailed) || errors.Is(err, ErrLimit)
}

// batch runs fn in a durable (fsynced) write transaction. A lone writer
// commits at once with db.Update; when other writes are in flight, writers
// are coalesced into one transaction and one fsync by group commit (see
// groupCommit: a batch takes every write queued while the previous one
// committed). fn may therefore run more than once (a batch is retried
// without a failing member), so it must depend only
// on the transaction's state and on values computed before the call.
// Outcome errors (not found, etag mismatch) are returned
// before fn writes anything; they reach the caller without failing the
// shared transaction.
func (s *Bolt) batch(fn func(tx *bolt.Tx) error) error {
	var outcome error
	wrapped := func(tx *bolt.Tx) error {
		outcome = nil
		err := fn(tx)
		if err != nil && isOutcome(err) {
			outcome = err
			return nil
		}
		return err
	}
	var err error
	if s.writers.Add(1) == 1 || s.noBatch {
		err = s.db.Update(wrapped)
	} else {
		err = s.group.do(s.db, wrapped)
	}
	s.writers.Add(-1)
	if err != nil {
		return err
	}
	return outcome
}

// addCount adds delta to the counter at key in bucket b; zero counters are removed.
func addCount(b *bolt.Bucket, key []byte, delta int64) error {
	var n uint64
	if v := b.Get(key); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	n = uint64(int64(n) + delta)
	if int64(n) <= 0 {
		return b.Delete(key)
	}
	return b.Put(key, u64(n))
}

// readCount reads a counter.
func readCount(b *bolt.Bucket, key []byte) int {
	if v := b.Get(key); len(v) == 8 {
		return int(binary.BigEndian.Uint64(v))
	}
	return 0
}

func hasSymmetricSecrets(a Attestation) bool {
	return a.SymmetricKey != nil && (a.SymmetricKey.PrimaryKey != "" || a.SymmetricKey.SecondaryKey != "")
}

// sealAttestation seals the symmetric keys of a for the record (bucket, key)
// and returns a copy of a whose keys are blank. No secrets: nil, a.
func (s *Bolt) sealAttestation(bucket, key []byte, a Attestation) ([]byte, Attestation, error) {
	if !hasSymmetricSecrets(a) {
		return nil, a, nil
	}
	pt, err := json.Marshal(symmetricSecrets{Primary: a.SymmetricKey.PrimaryKey, Secondary: a.SymmetricKey.SecondaryKey})
	if err != nil {
		return nil, a, err
	}
	a.SymmetricKey = &SymmetricKeyAttestation{}
	return s.seal(bucket, key, pt), a, nil
}

// openAttestation restores the symmetric keys sealed for (bucket, key) into a.
func (s *Bolt) openAttestation(bucket, key, sealed []byte, a *Attestation) error {
	if sealed == nil {
		return nil
	}
	pt, err := s.open(bucket, key, sealed)
	if err != nil {
		return err
	}
	var sec symmetricSecrets
	if err := json.Unmarshal(pt, &sec); err != nil {
		return fmt.Errorf("%w: %s/%q: sealed keys: %w", ErrCorrupt, bucket, key, err)
	}
	a.SymmetricKey = &SymmetricKeyAttestation{PrimaryKey: sec.Primary, SecondaryKey: sec.Secondary}
	return nil
}

// ---- enrollments ----

func (s *Bolt) decodeEnrollment(key, v []byte) (*Enrollment, error) {
	rec := enrollmentRecord{Enrollment: &Enrollment{}}
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("%w: %s/%q: %w", ErrCorrupt, bktEnrollments, key, err)
	}
	if err := s.openAttestation([]byte(bktEnrollments), key, rec.Sealed, &rec.Enrollment.Attestation); err != nil {
		return nil, err
	}
	return rec.Enrollment, nil
}

// cloneJSON deep-copies a record through its JSON form (the caller's record
// is never retained or modified).
func cloneJSON[T any](in *T) (*T, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	out := new(T)
	if err := json.Unmarshal(b, out); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	return out, nil
}

// getRecord reads the record of id (named idField in errors) from bucket
// and decodes it: ErrNotFound when it is absent or id is not a valid id.
// what names the kind of record in errors ("enrollment").
func getRecord[T any](ctx context.Context, s *Bolt, what, bucket, idField, id string, decode func(key, v []byte) (T, error)) (T, error) {
	var out T
	done, err := s.enter(ctx)
	if err != nil {
		return out, fmt.Errorf("store: get %s: %w", what, err)
	}
	defer done()
	key, err := normKey(idField, id)
	if err != nil {
		return out, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket([]byte(bucket)).Get(key)
		if v == nil {
			return fmt.Errorf("%w: %s %q", ErrNotFound, what, id)
		}
		out, err = decode(key, v)
		return err
	})
	return out, err
}

// listRecords returns one page of the records of bucket (keys of the given
// listing kind) in key order; what names them in errors ("enrollments").
func listRecords[T any](ctx context.Context, s *Bolt, what, bucket string, kind byte, q Query, decode func(key, v []byte) (T, error)) (Page[T], error) {
	var page Page[T]
	done, err := s.enter(ctx)
	if err != nil {
		return page, fmt.Errorf("store: list %s: %w", what, err)
	}
	defer done()
	err = s.db.View(func(tx *bolt.Tx) error {
		var err error
		page.Continuation, err = listBucket(tx.Bucket([]byte(bucket)), kind, nil, q, func(k, v []byte) error {
			item, err := decode(k, v)
			page.Items = append(page.Items, item)
			return err
		})
		return err
	})
	if err != nil {
		return Page[T]{}, fmt.Errorf("store: list %s: %w", what, err)
	}
	return page, nil
}

// GetEnrollment returns the enrollment or ErrNotFound.
func (s *Bolt) GetEnrollment(ctx context.Context, registrationID string) (*Enrollment, error) {
	return getRecord(ctx, s, "enrollment", bktEnrollments, "registrationId", registrationID, s.decodeEnrollment)
}

// prepareEnrollment validates e and builds what a write needs outside the
// transaction: the key, a private copy to store (keys blanked), the sealed
// keys and the copy to return.
func (s *Bolt) prepareEnrollment(e *Enrollment) (key []byte, stored, out *Enrollment, sealed []byte, err error) {
	if e == nil {
		return nil, nil, nil, nil, fmt.Errorf("%w: nil enrollment", ErrInvalidRecord)
	}
	if key, err = normKey("registrationId", e.RegistrationID); err != nil {
		return nil, nil, nil, nil, err
	}
	if out, err = cloneJSON(e); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("store: enrollment %q: %w", e.RegistrationID, err)
	}
	stored = new(Enrollment)
	*stored = *out
	sealed, stored.Attestation, err = s.sealAttestation([]byte(bktEnrollments), key, out.Attestation)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return key, stored, out, sealed, nil
}

// putEnrollmentTx writes one prepared enrollment inside tx.
func putEnrollmentTx(tx *bolt.Tx, key []byte, stored, out *Enrollment, sealed []byte, ifMatch, etag string, now time.Time) error {
	return putRecordTx(tx, bktEnrollments, key, ifMatch, now, func(created time.Time) ([]byte, error) {
		stored.ETag, stored.CreatedAt, stored.UpdatedAt = etag, created, now
		out.ETag, out.CreatedAt, out.UpdatedAt = etag, created, now
		return json.Marshal(enrollmentRecord{Enrollment: stored, Sealed: sealed})
	})
}

// putRecordTx writes the record encode returns under key in bucket, inside
// tx, if ifMatch allows it (see precondition). encode gets the creation time
// to record: the stored record's, or now for a new one. A new record is
// counted.
func putRecordTx(tx *bolt.Tx, bucket string, key []byte, ifMatch string, now time.Time, encode func(created time.Time) ([]byte, error)) error {
	b := tx.Bucket([]byte(bucket))
	old := b.Get(key)
	h, err := precondition(bucket, key, old, ifMatch)
	if err != nil {
		return err
	}
	created := now
	if old != nil && !h.CreatedAt.IsZero() {
		created = h.CreatedAt
	}
	data, err := encode(created)
	if err != nil {
		return fmt.Errorf("%w: %s %q: %w", ErrInvalidRecord, bucket, key, err)
	}
	if err := b.Put(key, data); err != nil {
		return err
	}
	if old == nil {
		return addCount(tx.Bucket([]byte(bktCounts)), []byte(bucket), 1)
	}
	return nil
}

// PutEnrollment creates or replaces an enrollment (see Store for ifMatch).
func (s *Bolt) PutEnrollment(ctx context.Context, e *Enrollment, ifMatch string) (*Enrollment, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: put enrollment: %w", err)
	}
	defer done()
	key, stored, out, sealed, err := s.prepareEnrollment(e)
	if err != nil {
		return nil, err
	}
	etag, now := newETag(), s.now().UTC()
	err = s.batch(func(tx *bolt.Tx) error {
		return putEnrollmentTx(tx, key, stored, out, sealed, ifMatch, etag, now)
	})
	if err != nil {
		return nil, fmt.Errorf("store: put enrollment: %w", err)
	}
	return out, nil
}

// bulkFillPercent is the leaf fill of bulk appends (bbolt's default is 0.5).
const bulkFillPercent = 0.9

// PutEnrollments writes many enrollments unconditionally in ONE transaction
// (all or nothing) and returns them as stored. It is the bulk import path:
// callers importing very large sets should pass chunks of about 10,000.
func (s *Bolt) PutEnrollments(ctx context.Context, es []*Enrollment) ([]*Enrollment, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: put enrollments: %w", err)
	}
	defer done()
	type prepared struct {
		key         []byte
		stored, out *Enrollment
		sealed      []byte
		etag        string
		index       int
	}
	ps := make([]prepared, len(es))
	for i, e := range es {
		key, stored, out, sealed, err := s.prepareEnrollment(e)
		if err != nil {
			return nil, fmt.Errorf("store: put enrollments: item %d: %w", i, err)
		}
		ps[i] = prepared{key, stored, out, sealed, newETag(), i}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: put enrollments: %w", err)
	}
	// Sorted keys insert faster; a stable sort keeps the last of duplicates last.
	slices.SortStableFunc(ps, func(a, b prepared) int { return bytes.Compare(a.key, b.key) })
	now := s.now().UTC()
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bktEnrollments))
		if last, _ := b.Cursor().Last(); len(ps) > 0 && bytes.Compare(ps[0].key, last) > 0 {
			// Appending past the last key (an import of sorted ids): pack
			// leaf pages full instead of bbolt's default half-full splits.
			b.FillPercent = bulkFillPercent
		}
		for _, p := range ps {
			if err := putEnrollmentTx(tx, p.key, p.stored, p.out, p.sealed, "", p.etag, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: put enrollments: %w", err)
	}
	outs := make([]*Enrollment, len(ps))
	for _, p := range ps {
		outs[p.index] = p.out
	}
	return outs, nil
}

// deleteRecord deletes bucket/key under ifMatch, decrementing the bucket's
// counter; extra runs inside the same transaction with the old head.
func (s *Bolt) deleteRecord(bucket, what, id, ifMatch string, extra func(tx *bolt.Tx, key []byte, h recordHead) error) error {
	key, err := normKey(what, id)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return s.batch(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		old := b.Get(key)
		if old == nil {
			return fmt.Errorf("%w: %s %q", ErrNotFound, strings.TrimSuffix(bucket, "s"), id)
		}
		h, err := precondition(bucket, key, old, ifMatch)
		if err != nil {
			return err
		}
		if err := b.Delete(key); err != nil {
			return err
		}
		if err := addCount(tx.Bucket([]byte(bktCounts)), []byte(bucket), -1); err != nil {
			return err
		}
		if extra != nil {
			return extra(tx, key, h)
		}
		return nil
	})
}

// DeleteEnrollment deletes an enrollment: ErrNotFound if absent,
// ErrPreconditionFailed if ifMatch names another etag.
func (s *Bolt) DeleteEnrollment(ctx context.Context, registrationID, ifMatch string) error {
	done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: delete enrollment: %w", err)
	}
	defer done()
	if err := s.deleteRecord(bktEnrollments, "registrationId", registrationID, ifMatch, nil); err != nil {
		return fmt.Errorf("store: delete enrollment: %w", err)
	}
	return nil
}

// ListEnrollments returns one page of enrollments in key order.
func (s *Bolt) ListEnrollments(ctx context.Context, q Query) (Page[*Enrollment], error) {
	return listRecords(ctx, s, "enrollments", bktEnrollments, 'e', q, s.decodeEnrollment)
}

// CountEnrollments returns the number of enrollments (a stored counter: O(1)).
func (s *Bolt) CountEnrollments(ctx context.Context) (int, error) {
	return s.count(ctx, bktCounts, bktEnrollments)
}

func (s *Bolt) count(ctx context.Context, bucket, key string) (int, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: count %s: %w", key, err)
	}
	defer done()
	var n int
	err = s.db.View(func(tx *bolt.Tx) error {
		n = readCount(tx.Bucket([]byte(bucket)), []byte(key))
		return nil
	})
	return n, err
}

// ---- listing ----

// listBucket visits up to q.MaxItems entries of b whose keys start with
// prefix, after the key named by q.Continuation, and returns the token of
// the next page ("" when none is left). Tokens are base64url(kind || last
// key): a token of another listing or another prefix is refused.
func listBucket(b *bolt.Bucket, kind byte, prefix []byte, q Query, visit func(k, v []byte) error) (string, error) {
	max := q.MaxItems
	if max <= 0 {
		max = DefaultMaxItems
	}
	if max > MaxMaxItems {
		max = MaxMaxItems
	}
	c := b.Cursor()
	var k, v []byte
	if q.Continuation != "" {
		raw, err := base64.RawURLEncoding.DecodeString(q.Continuation)
		if err != nil || len(raw) < 2 || raw[0] != kind || !bytes.HasPrefix(raw[1:], prefix) || len(raw) == 1+len(prefix) {
			return "", fmt.Errorf("%w: %.40q", ErrBadContinuation, q.Continuation)
		}
		last := raw[1:]
		k, v = c.Seek(last)
		if k != nil && bytes.Equal(k, last) {
			k, v = c.Next()
		}
	} else if prefix != nil {
		k, v = c.Seek(prefix)
	} else {
		k, v = c.First()
	}
	var last []byte
	for n := 0; k != nil && bytes.HasPrefix(k, prefix); n++ {
		if n == max {
			tok := append([]byte{kind}, last...)
			return base64.RawURLEncoding.EncodeToString(tok), nil
		}
		if err := visit(k, v); err != nil {
			return "", err
		}
		last = k
		k, v = c.Next()
	}
	return "", nil
}

// ---- groups ----

func (s *Bolt) decodeGroup(key, v []byte) (*Group, error) {
	rec := groupRecord{Group: &Group{}}
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("%w: %s/%q: %w", ErrCorrupt, bktGroups, key, err)
	}
	if err := s.openAttestation([]byte(bktGroups), key, rec.Sealed, &rec.Group.Attestation); err != nil {
		return nil, err
	}
	return rec.Group, nil
}

// GetGroup returns the enrollment group or ErrNotFound.
func (s *Bolt) GetGroup(ctx context.Context, groupID string) (*Group, error) {
	return getRecord(ctx, s, "group", bktGroups, "enrollmentGroupId", groupID, s.decodeGroup)
}

// PutGroup creates or replaces an enrollment group (see Store for ifMatch).
func (s *Bolt) PutGroup(ctx context.Context, g *Group, ifMatch string) (*Group, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: put group: %w", err)
	}
	defer done()
	if g == nil {
		return nil, fmt.Errorf("store: put group: %w: nil group", ErrInvalidRecord)
	}
	key, err := normKey("enrollmentGroupId", g.EnrollmentGroupID)
	if err != nil {
		return nil, fmt.Errorf("store: put group: %w", err)
	}
	out, err := cloneJSON(g)
	if err != nil {
		return nil, fmt.Errorf("store: put group %q: %w", g.EnrollmentGroupID, err)
	}
	stored := new(Group)
	*stored = *out
	sealed, att, err := s.sealAttestation([]byte(bktGroups), key, out.Attestation)
	if err != nil {
		return nil, err
	}
	stored.Attestation = att
	etag, now := newETag(), s.now().UTC()
	err = s.batch(func(tx *bolt.Tx) error {
		if s.maxGroups > 0 && tx.Bucket([]byte(bktGroups)).Get(key) == nil &&
			readCount(tx.Bucket([]byte(bktCounts)), []byte(bktGroups)) >= s.maxGroups {
			if _, err := precondition(bktGroups, key, nil, ifMatch); err != nil {
				return err // an etag for a missing group: that answer first
			}
			return &LimitError{What: "enrollment groups", Limit: s.maxGroups}
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
func (s *Bolt) DeleteGroup(ctx context.Context, groupID, ifMatch string) error {
	done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: delete group: %w", err)
	}
	defer done()
	err = s.deleteRecord(bktGroups, "enrollmentGroupId", groupID, ifMatch, func(tx *bolt.Tx, _ []byte, _ recordHead) error {
		return bumpGroupsRevision(tx)
	})
	if err != nil {
		return fmt.Errorf("store: delete group: %w", err)
	}
	return nil
}

// bumpGroupsRevision adds one to meta/groupsrev inside a group write.
func bumpGroupsRevision(tx *bolt.Tx) error {
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
func (s *Bolt) GroupsRevision(ctx context.Context) (uint64, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: groups revision: %w", err)
	}
	defer done()
	var rev uint64
	err = s.db.View(func(tx *bolt.Tx) error {
		switch v := tx.Bucket([]byte(bktMeta)).Get([]byte(metaGroupsRev)); len(v) {
		case 0:
		case 8:
			rev = binary.BigEndian.Uint64(v)
		default:
			return fmt.Errorf("%w: %s/%s is %d bytes, want 8", ErrCorrupt, bktMeta, metaGroupsRev, len(v))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: groups revision: %w", err)
	}
	return rev, nil
}

// ListGroups returns one page of enrollment groups in key order.
func (s *Bolt) ListGroups(ctx context.Context, q Query) (Page[*Group], error) {
	return listRecords(ctx, s, "groups", bktGroups, 'g', q, s.decodeGroup)
}

// CountGroups returns the number of enrollment groups.
func (s *Bolt) CountGroups(ctx context.Context) (int, error) {
	return s.count(ctx, bktCounts, bktGroups)
}

// ---- registrations ----

// cloneRegistration returns what cloneJSON(r) returns (a deep copy without
// HubKey and AttestationHash, Payload validated and compacted as json.Marshal writes it) without
// encoding and decoding the whole record: RecordRegistration runs for every
// device registration, and the round trip was a quarter of its CPU time
// (BenchmarkRecordRegistration, 256 writers). The round trip changes only
// strings that are not valid UTF-8 (to U+FFFD) and times, which the write
// replaces; a record with such a string takes the round trip.
func cloneRegistration(r *Registration) (*Registration, error) {
	for _, f := range [...]string{r.RegistrationID, r.Status, r.Substatus, r.AssignedHub, r.DeviceID,
		r.ErrorMessage, r.AttestationType, r.EnrollmentGroupID, r.ETag} {
		if !utf8.ValidString(f) {
			return cloneJSON(r)
		}
	}
	out := new(Registration)
	*out = *r
	out.HubKey, out.AttestationHash = nil, nil
	if len(r.Payload) == 0 {
		out.Payload = nil // omitempty: the round trip drops it
		return out, nil
	}
	p, err := json.Marshal(r.Payload) // validates, compacts and escapes as the record's encoding does
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	out.Payload = p
	return out, nil
}

func (s *Bolt) decodeRegistration(key, v []byte) (*Registration, error) {
	rec := registrationRecord{Registration: &Registration{}}
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("%w: %s/%q: %w", ErrCorrupt, bktRegistrations, key, err)
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
func (s *Bolt) GetRegistration(ctx context.Context, registrationID string) (*Registration, error) {
	return getRecord(ctx, s, "registration", bktRegistrations, "registrationId", registrationID, s.decodeRegistration)
}

// unindexRegistration removes a registration from its group's index.
func unindexRegistration(tx *bolt.Tx, key []byte, group string) error {
	if group == "" {
		return nil
	}
	g := []byte(lower(group))
	if err := tx.Bucket([]byte(bktGroupRegs)).Delete(groupRegKey(g, key)); err != nil {
		return err
	}
	return addCount(tx.Bucket([]byte(bktGroupCounts)), g, -1)
}

// DeleteRegistration deletes a registration record and its group index entry.
func (s *Bolt) DeleteRegistration(ctx context.Context, registrationID, ifMatch string) error {
	done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: delete registration: %w", err)
	}
	defer done()
	err = s.deleteRecord(bktRegistrations, "registrationId", registrationID, ifMatch, func(tx *bolt.Tx, key []byte, h recordHead) error {
		return unindexRegistration(tx, key, h.EnrollmentGroupID)
	})
	if err != nil {
		return fmt.Errorf("store: delete registration: %w", err)
	}
	return nil
}

// ListGroupRegistrations returns one page of the registrations of a group,
// in registration id order.
func (s *Bolt) ListGroupRegistrations(ctx context.Context, groupID string, q Query) (Page[*Registration], error) {
	var page Page[*Registration]
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
	err = s.db.View(func(tx *bolt.Tx) error {
		regs := tx.Bucket([]byte(bktRegistrations))
		var err error
		page.Continuation, err = listBucket(tx.Bucket([]byte(bktGroupRegs)), 'r', prefix, q, func(k, _ []byte) error {
			key := k[len(prefix):]
			v := regs.Get(key)
			if v == nil {
				return fmt.Errorf("%w: %s/%q points at a missing registration", ErrCorrupt, bktGroupRegs, k)
			}
			r, err := s.decodeRegistration(key, v)
			page.Items = append(page.Items, r)
			return err
		})
		return err
	})
	if err != nil {
		return Page[*Registration]{}, fmt.Errorf("store: list group registrations: %w", err)
	}
	return page, nil
}

// CountGroupRegistrations returns the number of registrations of a group.
func (s *Bolt) CountGroupRegistrations(ctx context.Context, groupID string) (int, error) {
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
func (s *Bolt) RecordRegistration(ctx context.Context, r *Registration, op *Operation) (*Registration, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: record registration: %w", err)
	}
	defer done()
	if r == nil {
		return nil, fmt.Errorf("store: record registration: %w: nil registration", ErrInvalidRecord)
	}
	key, err := normKey("registrationId", r.RegistrationID)
	if err != nil {
		return nil, fmt.Errorf("store: record registration: %w", err)
	}
	out, err := cloneRegistration(r)
	if err != nil {
		return nil, fmt.Errorf("store: record registration %q: %w", r.RegistrationID, err)
	}
	out.HubKey = bytes.Clone(r.HubKey)
	out.AttestationHash = bytes.Clone(r.AttestationHash)
	stored := new(Registration)
	*stored = *out
	stored.HubKey, stored.AttestationHash = nil, nil
	var sealed []byte
	if len(r.HubKey) > 0 {
		sealed = s.seal([]byte(bktRegistrations), key, r.HubKey)
	}
	var opKey, opData []byte
	var opExp time.Time
	if op != nil {
		if opKey, opData, opExp, err = encodeOperation(op); err != nil {
			return nil, fmt.Errorf("store: record registration %q: %w", r.RegistrationID, err)
		}
	}
	newGroup := lower(r.EnrollmentGroupID)
	etag, now := newETag(), s.now().UTC()
	err = s.batch(func(tx *bolt.Tx) error {
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
		stored.ETag, stored.CreatedAt, stored.UpdatedAt = etag, created, now
		out.ETag, out.CreatedAt, out.UpdatedAt = etag, created, now
		data, err := json.Marshal(registrationRecord{Registration: stored, Sealed: sealed, AttHash: out.AttestationHash})
		if err != nil {
			return fmt.Errorf("%w: registration %q: %w", ErrInvalidRecord, key, err)
		}
		if old == nil {
			if err := addCount(tx.Bucket([]byte(bktCounts)), []byte(bktRegistrations), 1); err != nil {
				return err
			}
		}
		if err := b.Put(key, data); err != nil {
			return err
		}
		if oldGroup := lower(h.EnrollmentGroupID); old == nil || oldGroup != newGroup {
			if old != nil {
				if err := unindexRegistration(tx, key, oldGroup); err != nil {
					return err
				}
			}
			if newGroup != "" {
				if err := tx.Bucket([]byte(bktGroupRegs)).Put(groupRegKey([]byte(newGroup), key), []byte{}); err != nil {
					return err
				}
				if err := addCount(tx.Bucket([]byte(bktGroupCounts)), []byte(newGroup), 1); err != nil {
					return err
				}
			}
		}
		if op != nil {
			return putOperationTx(tx, opKey, opData, opExp)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: record registration: %w", err)
	}
	return out, nil
}

// ---- operations ----

// encodeOperation validates op and returns its key, stored value and expiry.
func encodeOperation(op *Operation) ([]byte, []byte, time.Time, error) {
	if err := checkID("operationId", op.ID); err != nil {
		return nil, nil, time.Time{}, err
	}
	if op.ExpiresAt.IsZero() {
		return nil, nil, time.Time{}, fmt.Errorf("%w: operation %q has no expiry", ErrInvalidRecord, op.ID)
	}
	data, err := json.Marshal(op)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("%w: operation %q: %w", ErrInvalidRecord, op.ID, err)
	}
	return []byte(op.ID), data, op.ExpiresAt, nil
}

// putOperationTx writes an operation and moves its expiry index entry.
func putOperationTx(tx *bolt.Tx, key, data []byte, exp time.Time) error {
	b := tx.Bucket([]byte(bktOperations))
	idx := tx.Bucket([]byte(bktExpiry))
	if old := b.Get(key); old != nil {
		var h struct {
			ExpiresAt time.Time `json:"expiresAt"`
		}
		if err := json.Unmarshal(old, &h); err != nil {
			return fmt.Errorf("%w: %s/%q: %w", ErrCorrupt, bktOperations, key, err)
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
func (s *Bolt) PutOperation(ctx context.Context, op *Operation) error {
	done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: put operation: %w", err)
	}
	defer done()
	if op == nil {
		return fmt.Errorf("store: put operation: %w: nil operation", ErrInvalidRecord)
	}
	key, data, exp, err := encodeOperation(op)
	if err != nil {
		return fmt.Errorf("store: put operation: %w", err)
	}
	if err := s.batch(func(tx *bolt.Tx) error { return putOperationTx(tx, key, data, exp) }); err != nil {
		return fmt.Errorf("store: put operation: %w", err)
	}
	return nil
}

// GetOperation returns the operation, or ErrNotFound if absent or expired
// (now >= ExpiresAt).
func (s *Bolt) GetOperation(ctx context.Context, operationID string) (*Operation, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: get operation: %w", err)
	}
	defer done()
	if err := checkID("operationId", operationID); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	now := s.now()
	var op *Operation
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket([]byte(bktOperations)).Get([]byte(operationID))
		if v == nil {
			return fmt.Errorf("%w: operation %q", ErrNotFound, operationID)
		}
		op = new(Operation)
		if err := json.Unmarshal(v, op); err != nil {
			return fmt.Errorf("%w: %s/%q: %w", ErrCorrupt, bktOperations, operationID, err)
		}
		if !now.Before(op.ExpiresAt) {
			return fmt.Errorf("%w: operation %q expired", ErrNotFound, operationID)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return op, nil
}

// ---- expiry ----

// sweepChunk bounds the deletions of one Sweep transaction.
const sweepChunk = 10000

// Sweep deletes the operations whose expiry is at or before now, walking the
// expiry index from its start, in transactions of at most 10,000 deletions.
// It returns how many it deleted.
func (s *Bolt) Sweep(ctx context.Context, now time.Time) (int, error) {
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
		err := s.db.Update(func(tx *bolt.Tx) error {
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
					return fmt.Errorf("%w: %s/%x: unknown kind", ErrCorrupt, bktExpiry, k)
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
