package bolt

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
	"github.com/tpmdps/dpsd/store/internal/seal"
)

// SchemaVersion is the layout version this build writes (meta/version).
// Version 0 is a file without meta/version (the pre-release layout: record
// buckets only, secrets in plaintext); version 1 also kept used TPM
// challenge references (a challenges bucket and 'c' expiry entries);
// version 2 had no endorsement key index (ekindex); version 3 had no linked
// hubs and no jobs (linkedhubs, jobs, jobdue). Open upgrades them all.
const SchemaVersion = 4

// Bucket names and fixed keys of the layout (see doc.go).
const (
	bktMeta          = "meta"
	bktEnrollments   = "enrollments"
	bktGroups        = "groups"
	bktRegistrations = "registrations"
	bktGroupRegs     = "groupregs"
	bktGroupCounts   = "groupcounts"
	bktOperations    = "operations"
	bktExpiry        = "expiry"
	bktCounts        = "counts"
	bktEKIndex       = "ekindex"
	bktLinkedHubs    = "linkedhubs"
	bktJobs          = "jobs"
	bktJobDue        = "jobdue"

	metaVersion   = "version"
	metaKeyCheck  = "keycheck"
	metaGroupsRev = "groupsrev"
	metaHubsRev   = "hubsrev"

	expiryOperation = 'o'
)

// What schema version 1 had and version 2 dropped: the used TPM challenge
// references. Only migrateV1 knows these names.
const (
	v1BktChallenges   = "challenges"
	v1ExpiryChallenge = 'c'
)

// allBuckets lists every top-level bucket of the current schema version.
func allBuckets() []string {
	return []string{bktMeta, bktEnrollments, bktGroups, bktRegistrations, bktGroupRegs,
		bktGroupCounts, bktOperations, bktExpiry, bktCounts, bktEKIndex, bktLinkedHubs, bktJobs, bktJobDue}
}

// migration upgrades the file from version from to from+1, inside the one
// transaction that runs all pending migrations.
type migration struct {
	from int
	name string
	fn   func(s *Store, tx *bbolt.Tx) error
}

// migrations is the upgrade table: entry i takes version i to i+1.
func migrations() []migration {
	return []migration{
		{from: 0, name: "create buckets, seal plaintext secrets, build indexes and counters", fn: migrateV0},
		{from: 1, name: "drop used TPM challenge references (challenges bucket and their expiry entries)", fn: migrateV1},
		{from: 2, name: "build the endorsement key index (ekindex) of the TPM enrollments", fn: migrateV2},
		{from: 3, name: "create the linked hub and job buckets (linkedhubs, jobs, jobdue)", fn: migrateV3},
	}
}

// readMeta returns the schema version (0 when absent) and the key check value
// (nil when absent).
func (s *Store) readMeta() (int, []byte, error) {
	var version int
	var check []byte
	err := s.db.View(func(tx *bbolt.Tx) error {
		m := tx.Bucket([]byte(bktMeta))
		if m == nil {
			return nil
		}
		if v := m.Get([]byte(metaVersion)); v != nil {
			if len(v) != 8 {
				return fmt.Errorf("%w: %s: meta/version is %d bytes, want 8", store.ErrCorrupt, s.path, len(v))
			}
			u := binary.BigEndian.Uint64(v)
			if u > 1<<31 {
				return fmt.Errorf("%w: %s has schema version %d, this build supports up to version %d", ErrSchema, s.path, u, SchemaVersion)
			}
			version = int(u)
		}
		if c := m.Get([]byte(metaKeyCheck)); c != nil {
			check = bytes.Clone(c)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrSchema) || errors.Is(err, store.ErrCorrupt) {
			return 0, nil, err
		}
		return 0, nil, fmt.Errorf("store: read meta of %s: %w", s.path, err)
	}
	return version, check, nil
}

// migrate runs every migration from version from to SchemaVersion, records
// the new version and the key check, all in one transaction: a crash leaves
// the old version intact. A file created by this open is set up by the same
// steps but logs none of them ("store: opened ... created=true" says it).
func (s *Store) migrate(from int, check []byte, created bool) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for _, m := range migrations() {
			if m.from < from {
				continue
			}
			if !created {
				s.log.Info("store: migrating", "path", s.path, "from", m.from, "to", m.from+1, "what", m.name)
			}
			if err := m.fn(s, tx); err != nil {
				return fmt.Errorf("migration %d->%d (%s): %w", m.from, m.from+1, m.name, err)
			}
		}
		meta, err := tx.CreateBucketIfNotExists([]byte(bktMeta))
		if err != nil {
			return err
		}
		if err := meta.Put([]byte(metaVersion), u64(SchemaVersion)); err != nil {
			return err
		}
		return meta.Put([]byte(metaKeyCheck), check)
	})
	if err != nil {
		return fmt.Errorf("store: upgrade %s from schema version %d to %d: %w", s.path, from, SchemaVersion, err)
	}
	return nil
}

// migrateV0 upgrades the pre-release layout: it creates the missing buckets,
// encrypts plaintext symmetric keys found in enrollments and groups, and
// rebuilds the derived buckets (group index, expiry index, counters).
func migrateV0(s *Store, tx *bbolt.Tx) error {
	for _, name := range allBuckets() {
		if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	for _, name := range []string{bktEnrollments, bktGroups} {
		if err := sealPlaintextKeys(s, tx.Bucket([]byte(name)), []byte(name)); err != nil {
			return err
		}
	}
	return rebuildDerived(tx)
}

// migrateV1 removes what version 1 kept of used TPM challenge references:
// the challenges bucket and every expiry index entry of kind 'c'. Their
// single use is now checked in memory by the provisioning service (a
// reference names the broker run that issued it), so nothing replaces them.
// A file without them (a version 0 file just migrated) passes unchanged.
func migrateV1(s *Store, tx *bbolt.Tx) error {
	if tx.Bucket([]byte(v1BktChallenges)) != nil {
		if err := tx.DeleteBucket([]byte(v1BktChallenges)); err != nil {
			return fmt.Errorf("delete bucket %s: %w", v1BktChallenges, err)
		}
	}
	idx := tx.Bucket([]byte(bktExpiry))
	if idx == nil {
		return nil
	}
	// Collect first: deleting under a cursor that walks on skips entries.
	var keys [][]byte
	err := idx.ForEach(func(k, _ []byte) error {
		if len(k) >= 9 && k[8] == v1ExpiryChallenge {
			keys = append(keys, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := idx.Delete(k); err != nil {
			return fmt.Errorf("delete %s/%x: %w", bktExpiry, k, err)
		}
	}
	if len(keys) > 0 {
		s.log.Info("store: dropped used TPM challenge references", "path", s.path, "entries", len(keys))
	}
	return nil
}

// migrateV2 builds the endorsement key index from the enrollments. It
// replaces any ekindex bucket already there (a version 0 file migrated in
// the same transaction has one), so it can run on any file.
func migrateV2(s *Store, tx *bbolt.Tx) error {
	if tx.Bucket([]byte(bktEKIndex)) != nil {
		if err := tx.DeleteBucket([]byte(bktEKIndex)); err != nil {
			return fmt.Errorf("reset bucket %s: %w", bktEKIndex, err)
		}
	}
	b, err := tx.CreateBucket([]byte(bktEKIndex))
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", bktEKIndex, err)
	}
	entries, err := ekIndexEntries(tx)
	if err != nil {
		return err
	}
	for k := range entries {
		if err := b.Put([]byte(k), []byte{}); err != nil {
			return err
		}
	}
	s.log.Info("store: indexed the endorsement keys of TPM enrollments", "path", s.path, "entries", len(entries))
	return nil
}

// migrateV3 creates the buckets of linked hubs and jobs, which a version 3
// file does not have (a version 0 file migrated in the same transaction
// already does).
func migrateV3(s *Store, tx *bbolt.Tx) error {
	for _, name := range []string{bktLinkedHubs, bktJobs, bktJobDue} {
		if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// ekIndexEntries returns the ekindex entries the enrollments imply.
func ekIndexEntries(tx *bbolt.Tx) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := tx.Bucket([]byte(bktEnrollments)).ForEach(func(k, v []byte) error {
		ek, err := storedEK(k, v)
		if err != nil {
			return err
		}
		if ek != "" {
			out[string(ekIndexKey(ek, k))] = []byte{}
		}
		return nil
	})
	return out, err
}

// sealPlaintextKeys rewrites records whose symmetric keys are stored in the
// clear (version 0) into the sealed form.
func sealPlaintextKeys(s *Store, b *bbolt.Bucket, bucket []byte) error {
	type rewrite struct{ k, v []byte }
	var todo []rewrite
	err := b.ForEach(func(k, v []byte) error {
		var raw struct {
			Attestation store.Attestation `json:"attestation"`
			Sealed      json.RawMessage   `json:"sealed"`
		}
		if err := json.Unmarshal(v, &raw); err != nil {
			return fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bucket, k, err)
		}
		if raw.Sealed != nil || !seal.HasSymmetricSecrets(raw.Attestation) {
			return nil
		}
		var generic map[string]json.RawMessage
		if err := json.Unmarshal(v, &generic); err != nil {
			return fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bucket, k, err)
		}
		sealed, stripped, err := s.sealAttestation(bucket, k, raw.Attestation)
		if err != nil {
			return err
		}
		att, err := json.Marshal(stripped)
		if err != nil {
			return err
		}
		sj, err := json.Marshal(sealed)
		if err != nil {
			return err
		}
		generic["attestation"] = att
		generic["sealed"] = sj
		nv, err := json.Marshal(generic)
		if err != nil {
			return err
		}
		todo = append(todo, rewrite{bytes.Clone(k), nv})
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range todo {
		if err := b.Put(r.k, r.v); err != nil {
			return err
		}
	}
	if len(todo) > 0 {
		s.log.Warn("store: sealed plaintext secrets of a version 0 file; their old pages are free but not scrubbed until the file is compacted (bbolt compact)",
			"path", s.path, "bucket", string(bucket), "records", len(todo))
	}
	return nil
}

// rebuildDerived recreates the buckets that are functions of the record
// buckets: groupregs, groupcounts, expiry, counts, ekindex and jobdue.
func rebuildDerived(tx *bbolt.Tx) error {
	for _, name := range []string{bktGroupRegs, bktGroupCounts, bktExpiry, bktCounts, bktEKIndex, bktJobDue} {
		if err := tx.DeleteBucket([]byte(name)); err != nil && tx.Bucket([]byte(name)) != nil {
			return fmt.Errorf("reset bucket %s: %w", name, err)
		}
		if _, err := tx.CreateBucket([]byte(name)); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	want, err := computeDerived(tx)
	if err != nil {
		return err
	}
	for name, kv := range want {
		b := tx.Bucket([]byte(name))
		for k, v := range kv {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
	}
	return nil
}

// computeDerived returns what the derived buckets must hold given the record
// buckets: bucket name -> key -> value.
func computeDerived(tx *bbolt.Tx) (map[string]map[string][]byte, error) {
	ekIndex, err := ekIndexEntries(tx)
	if err != nil {
		return nil, err
	}
	want := map[string]map[string][]byte{
		bktGroupRegs: {}, bktGroupCounts: {}, bktExpiry: {}, bktCounts: {}, bktEKIndex: ekIndex, bktJobDue: {},
	}
	counts := map[string]uint64{}
	for _, name := range []string{bktEnrollments, bktGroups, bktRegistrations, bktJobs, bktLinkedHubs} {
		counts[name] = uint64(tx.Bucket([]byte(name)).Stats().KeyN)
	}
	err = tx.Bucket([]byte(bktJobs)).ForEach(func(k, v []byte) error {
		var j store.Job
		if err := json.Unmarshal(v, &j); err != nil {
			return fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bktJobs, k, err)
		}
		want[bktJobDue][string(jobDueKey(available(&j), k))] = []byte{}
		return nil
	})
	if err != nil {
		return nil, err
	}
	groupCounts := map[string]uint64{}
	err = tx.Bucket([]byte(bktRegistrations)).ForEach(func(k, v []byte) error {
		var h recordHead
		if err := json.Unmarshal(v, &h); err != nil {
			return fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bktRegistrations, k, err)
		}
		if h.EnrollmentGroupID != "" {
			g := record.Lower(h.EnrollmentGroupID)
			want[bktGroupRegs][string(groupRegKey([]byte(g), k))] = []byte{}
			groupCounts[g]++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = tx.Bucket([]byte(bktOperations)).ForEach(func(k, v []byte) error {
		var h struct {
			ExpiresAt time.Time `json:"expiresAt"`
		}
		if err := json.Unmarshal(v, &h); err != nil {
			return fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bktOperations, k, err)
		}
		want[bktExpiry][string(expiryKey(h.ExpiresAt, expiryOperation, k))] = []byte{}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for name, n := range counts {
		if n > 0 { // addCount removes zero counters
			want[bktCounts][name] = u64(n)
		}
	}
	for g, n := range groupCounts {
		want[bktGroupCounts][g] = u64(n)
	}
	return want, nil
}

// checkIndexes compares the derived buckets with what the record buckets
// imply and reports every difference.
func checkIndexes(tx *bbolt.Tx) []error {
	for _, name := range allBuckets() {
		if tx.Bucket([]byte(name)) == nil {
			return []error{fmt.Errorf("bucket %s is missing", name)}
		}
	}
	want, err := computeDerived(tx)
	if err != nil {
		return []error{err}
	}
	var errs []error
	for name, kv := range want {
		b := tx.Bucket([]byte(name))
		n := 0
		_ = b.ForEach(func(k, v []byte) error {
			n++
			w, ok := kv[string(k)]
			switch {
			case !ok:
				errs = append(errs, fmt.Errorf("%s/%q: stale entry", name, k))
			case !bytes.Equal(w, v):
				errs = append(errs, fmt.Errorf("%s/%q: is %x, want %x", name, k, v, w))
			}
			return nil
		})
		if n != len(kv) {
			errs = append(errs, fmt.Errorf("%s: %d entries, want %d", name, n, len(kv)))
		}
		if len(errs) > 20 {
			break
		}
	}
	return errs
}

// u64 encodes n big-endian.
func u64(n uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, n)
	return b
}

// expiryKey is the expiry index key: unix nanoseconds (big-endian, so keys
// sort by time; times before 1970 clamp to 0), a kind byte, and the id.
func expiryKey(t time.Time, kind byte, id []byte) []byte {
	var n uint64
	if ns := t.UnixNano(); ns > 0 {
		n = uint64(ns)
	}
	k := make([]byte, 0, 9+len(id))
	k = binary.BigEndian.AppendUint64(k, n)
	k = append(k, kind)
	return append(k, id...)
}

// groupRegKey is the group index key: group id, NUL, registration id (both lowercased).
func groupRegKey(group, reg []byte) []byte {
	k := make([]byte, 0, len(group)+1+len(reg))
	k = append(k, group...)
	k = append(k, 0)
	return append(k, reg...)
}
