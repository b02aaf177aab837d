package bolt

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/storetest"
)

// setVersion rewrites meta/version of a closed file with raw bbolt.
func setVersion(t *testing.T, path string, v uint64) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bktMeta)).Put([]byte(metaVersion), u64(v))
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}

// expiryKinds counts the expiry index entries of each kind byte.
func expiryKinds(tx *bbolt.Tx) map[byte]int {
	kinds := map[byte]int{}
	_ = tx.Bucket([]byte(bktExpiry)).ForEach(func(k, _ []byte) error {
		if len(k) >= 9 {
			kinds[k[8]]++
		}
		return nil
	})
	return kinds
}

// TestSchemaUpgradeFromVersion1 builds a version 1 file holding used TPM
// challenge references (the challenges bucket and 'c' expiry entries,
// interleaved in time with operations), opens it, and checks that the
// upgrade dropped them and nothing else; then that a newer file is refused.
func TestSchemaUpgradeFromVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v1.db")
	now := time.Now()

	// The records, written by this build (version 1 records have the same form).
	s := openAt(t, path, nil)
	e, err := s.PutEnrollment(ctx, storetest.FullEnrollment("Dev-1"), "")
	if err != nil {
		t.Fatal(err)
	}
	g, err := s.PutGroup(ctx, storetest.FullGroup("Grp"), "")
	if err != nil {
		t.Fatal(err)
	}
	const ops = 5
	var regs []*store.Registration
	for i := range ops {
		id := fmt.Sprint("reg-", i)
		r, err := s.RecordRegistration(ctx, storetest.FullRegistration(id, "grp"), storetest.FullOperation("op-"+id, id, now.Add(time.Duration(i+1)*10*time.Minute)))
		if err != nil {
			t.Fatal(err)
		}
		regs = append(regs, r)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Turn it into a version 1 file with used challenge references, some
	// expired and some not, spread over the operations' expiry range.
	const refs = 2500
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		if err := tx.Bucket([]byte(bktMeta)).Put([]byte(metaVersion), u64(1)); err != nil {
			return err
		}
		c, err := tx.CreateBucket([]byte(v1BktChallenges))
		if err != nil {
			return err
		}
		idx := tx.Bucket([]byte(bktExpiry))
		for i := range refs {
			ref := []byte(fmt.Sprintf("ref-%05d-%s", i, strings.Repeat("x", i%40)))
			exp := expiryKey(now.Add(time.Duration(i-refs/10)*time.Second), v1ExpiryChallenge, ref)
			if err := c.Put(ref, bytes.Clone(exp[:8])); err != nil {
				return err
			}
			if err := idx.Put(exp, []byte{}); err != nil {
				return err
			}
		}
		if k := expiryKinds(tx); k[v1ExpiryChallenge] != refs || k[expiryOperation] != ops {
			return fmt.Errorf("test setup: expiry kinds %v", k)
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}

	s = openAt(t, path, nil)
	if err := s.Check(); err != nil {
		t.Fatalf("after upgrade: %v", err)
	}
	err = s.db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket([]byte(bktMeta)).Get([]byte(metaVersion)); !bytes.Equal(v, u64(SchemaVersion)) {
			return fmt.Errorf("version %x, want %d", v, SchemaVersion)
		}
		if tx.Bucket([]byte(v1BktChallenges)) != nil {
			return fmt.Errorf("bucket %s survived the upgrade", v1BktChallenges)
		}
		if k := expiryKinds(tx); len(k) != 1 || k[expiryOperation] != ops {
			return fmt.Errorf("expiry kinds after upgrade: %v, want only %d operations", k, ops)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GetEnrollment(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	storetest.SameJSON(t, "enrollment after upgrade", got, e)
	gg, err := s.GetGroup(ctx, "GRP")
	if err != nil {
		t.Fatal(err)
	}
	storetest.SameJSON(t, "group after upgrade", gg, g)
	for _, r := range regs {
		got, err := s.GetRegistration(ctx, r.RegistrationID)
		if err != nil {
			t.Fatal(err)
		}
		if got.ETag != r.ETag || !reflect.DeepEqual(got.HubKey, r.HubKey) {
			t.Fatalf("registration %s after upgrade: %+v", r.RegistrationID, got)
		}
		if _, err := s.GetOperation(ctx, "op-"+r.RegistrationID); err != nil {
			t.Fatalf("operation of %s after upgrade: %v", r.RegistrationID, err)
		}
	}
	if n, err := s.CountGroupRegistrations(ctx, "grp"); err != nil || n != ops {
		t.Fatalf("group registrations after upgrade: %d %v", n, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A second open is a no-op; Sweep then finds the operations only.
	s = openAt(t, path, nil)
	if n, err := s.Sweep(ctx, now.Add(48*time.Hour)); err != nil || n != ops {
		t.Fatalf("sweep after upgrade: %d %v, want %d operations", n, err, ops)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A file from a newer build is still refused, and left as it was.
	setVersion(t, path, SchemaVersion+1)
	_, err = Open(path, Options{Timeout: time.Second})
	if !errors.Is(err, ErrSchema) {
		t.Fatalf("newer schema: %v", err)
	}
	for _, want := range []string{fmt.Sprintf("version %d", SchemaVersion+1), fmt.Sprintf("version %d", SchemaVersion)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	db, err = bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket([]byte(bktMeta)).Get([]byte(metaVersion)); !bytes.Equal(v, u64(SchemaVersion+1)) {
			return fmt.Errorf("refused file's version rewritten: %x", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestExpiryUnknownKind: after the upgrade no code path knows the retired
// challenge kind, so an expiry entry of that kind is damage that Check
// reports and Sweep refuses to guess about.
func TestExpiryUnknownKind(t *testing.T) {
	ctx := context.Background()
	clock := storetest.NewClock()
	s := openTest(t, clock)
	err := s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bktExpiry)).Put(expiryKey(clock.Now(), v1ExpiryChallenge, []byte("ref")), []byte{})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(); err == nil || !strings.Contains(err.Error(), "stale entry") {
		t.Fatalf("Check() with a challenge expiry entry = %v", err)
	}
	if _, err := s.Sweep(ctx, clock.Now().Add(time.Hour)); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("Sweep with a challenge expiry entry = %v", err)
	}
}

// TestSchemaUpgradeFromVersion2: a version 2 file has no endorsement key
// index; opening it builds the index from the enrollments in the upgrade's
// transaction, so lookups find the enrollments written before.
func TestSchemaUpgradeFromVersion2(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v2.db")
	s := openAt(t, path, nil)
	ek := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x5a}, 314))
	for _, id := range []string{"Dev-1", "dev-2", "dev-3"} {
		e := &store.Enrollment{RegistrationID: id, EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{
			Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: ek}}}}
		if id == "dev-3" {
			e.Attestation.TPM.EndorsementKey = base64.StdEncoding.EncodeToString([]byte("another key"))
		}
		if _, err := s.PutEnrollment(ctx, e, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.PutEnrollment(ctx, storetest.FullEnrollment("sym"), ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Turn it into a version 2 file: no ekindex bucket.
	downgrade(t, path, 2, bktEKIndex)

	s = openAt(t, path, nil)
	if err := s.Check(); err != nil {
		t.Fatalf("after upgrade: %v", err)
	}
	ids, err := s.EnrollmentIDsByEK(ctx, ek)
	if err != nil || !reflect.DeepEqual(ids, []string{"dev-1", "dev-2"}) {
		t.Fatalf("enrollments of the key after upgrade: %q %v", ids, err)
	}
	err = s.db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket([]byte(bktMeta)).Get([]byte(metaVersion)); !bytes.Equal(v, u64(SchemaVersion)) {
			return fmt.Errorf("version %x, want %d", v, SchemaVersion)
		}
		if n := tx.Bucket([]byte(bktEKIndex)).Stats().KeyN; n != 3 {
			return fmt.Errorf("%s has %d entries, want 3", bktEKIndex, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// downgrade turns the closed store file at path into one of an earlier
// schema version: the buckets that version did not have are deleted and
// the version number is written back.
func downgrade(t *testing.T, path string, version uint64, buckets ...string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range buckets {
			if err := tx.DeleteBucket([]byte(b)); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte(bktMeta)).Put([]byte(metaVersion), u64(version))
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("downgrading %s to version %d: %v", path, version, err)
	}
}
