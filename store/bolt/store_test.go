package bolt

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/storetest"
)

// openTest opens a store in a fresh temporary directory and closes it at the end.
func openTest(t testing.TB, clock *storetest.Clock) *Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dpsd.db")
	return openAt(t, path, clock)
}

func openAt(t testing.TB, path string, clock *storetest.Clock) *Store {
	t.Helper()
	opts := Options{Timeout: time.Second}
	if clock != nil {
		opts.Now = clock.Now
	}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestSweepManyChunks(t *testing.T) {
	ctx := context.Background()
	clock := storetest.NewClock()
	s := openTest(t, clock)
	const n = sweepChunk + 2345
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for i := range n {
			op := storetest.FullOperation(fmt.Sprint("op", i), "r", clock.Now().Add(time.Duration(i)*time.Millisecond))
			k, v, exp, err := encodeOperation(op)
			if err != nil {
				return err
			}
			if err := putOperationTx(tx, k, v, exp); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Sweep(ctx, clock.Now().Add(time.Hour))
	if err != nil || got != n {
		t.Fatalf("sweep %d of %d: %v", got, n, err)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

// rawContains reports whether the file at path contains any of needles.
func rawContains(t *testing.T, path string, needles map[string][]byte) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for name, n := range needles {
		if bytes.Contains(raw, n) {
			found = append(found, name)
		}
	}
	return found
}

func TestEncryptionAtRest(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "dpsd.db")
	s := openAt(t, path, nil)
	e := storetest.FullEnrollment("enc-e")
	g := storetest.FullGroup("enc-g")
	g.Attestation.SymmetricKey = &store.SymmetricKeyAttestation{PrimaryKey: "Z3JvdXAtcHJpbWFyeS1rZXktc2VjcmV0LTAwMDAwMA==", SecondaryKey: "Z3JvdXAtc2Vjb25kYXJ5LWtleS1zZWNyZXQtMTExMQ=="}
	r := storetest.FullRegistration("enc-r", "enc-g")
	if _, err := s.PutEnrollment(ctx, e, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutGroup(ctx, g, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordRegistration(ctx, r, nil); err != nil {
		t.Fatal(err)
	}
	hub := storetest.FullLinkedHub("enc-hub.example.net")
	if _, err := s.PutLinkedHub(ctx, hub, ""); err != nil {
		t.Fatal(err)
	}
	job := storetest.NewJob("enc-op", "enc-r", time.Now())
	op := &store.Operation{ID: "enc-op", RegistrationID: "enc-r", Status: store.RegistrationAssigning, ExpiresAt: time.Now().Add(time.Hour)}
	if err := s.EnqueueJob(ctx, op, job, 0); err != nil {
		t.Fatal(err)
	}
	needles := map[string][]byte{
		"linked hub connection string key": []byte("aHViLXNlY3JldC1rZXktMDEyMzQ1Njc4OWFiY2RlZg=="),
		"linked hub connection string":     []byte(hub.ConnectionString),
		"linked hub webhook secret":        []byte(hub.Webhook.Secret),
		"job secret":                       job.Secret,
	}
	for name, b64 := range map[string]string{
		"enrollment primary": e.Attestation.SymmetricKey.PrimaryKey, "enrollment secondary": e.Attestation.SymmetricKey.SecondaryKey,
		"group primary": g.Attestation.SymmetricKey.PrimaryKey, "group secondary": g.Attestation.SymmetricKey.SecondaryKey,
	} {
		needles[name+" (base64)"] = []byte(b64)
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			t.Fatal(err)
		}
		needles[name+" (raw)"] = raw
	}
	needles["hub key (raw)"] = r.HubKey
	needles["hub key (base64)"] = []byte(base64.StdEncoding.EncodeToString(r.HubKey))
	key, err := os.ReadFile(path + ".key")
	if err != nil {
		t.Fatal(err)
	}
	needles["data key"] = key
	needles["data key (base64)"] = []byte(base64.StdEncoding.EncodeToString(key))
	// Self-test of the scan: a non-secret field is found.
	if found := rawContains(t, path, map[string][]byte{"device id": []byte("dev-enc-e")}); len(found) != 1 {
		t.Fatal("raw scan does not see stored plaintext fields")
	}
	if found := rawContains(t, path, needles); len(found) > 0 {
		t.Fatalf("secrets readable in the database file: %v", found)
	}
	// Also after close (everything flushed) and in a backup.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if found := rawContains(t, path, needles); len(found) > 0 {
		t.Fatalf("secrets readable in the closed database file: %v", found)
	}
	for name, p := range map[string]string{"db": path, "key": path + ".key"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s file mode %v, want 0600", name, fi.Mode().Perm())
		}
	}
	// Without its key file a copy of the database reveals nothing and does not open.
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	data, _ := os.ReadFile(path)
	if err := os.WriteFile(copyPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(copyPath, Options{Timeout: time.Second}); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("copy opened without its key: %v", err)
	}
	if _, err := os.Stat(copyPath + ".key"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a new key file was created for a database that has one")
	}
	// A different key is refused too.
	other := filepath.Join(t.TempDir(), "other.key")
	if err := os.WriteFile(other, bytes.Repeat([]byte{7}, DataKeySize), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(copyPath, Options{Timeout: time.Second, KeyFile: other}); !errors.Is(err, ErrKeyFile) || !strings.Contains(err.Error(), other) {
		t.Fatalf("wrong key: %v", err)
	}
}

func TestKeyFileChecks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k.db")
	keyPath := filepath.Join(dir, "k.key")
	for _, c := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"short", make([]byte, 16), 0o600},
		{"long", make([]byte, 33), 0o600},
		{"group readable", make([]byte, 32), 0o640},
		{"world readable", make([]byte, 32), 0o604},
	} {
		_ = os.Remove(keyPath)
		if err := os.WriteFile(keyPath, c.data, c.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(keyPath, c.mode); err != nil {
			t.Fatal(err)
		}
		_, err := Open(path, Options{Timeout: time.Second, KeyFile: keyPath})
		if !errors.Is(err, ErrKeyFile) || !strings.Contains(err.Error(), keyPath) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

func TestTamperedCiphertext(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, nil)
	if _, err := s.PutEnrollment(ctx, storetest.FullEnrollment("a"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutEnrollment(ctx, storetest.FullEnrollment("b"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordRegistration(ctx, storetest.FullRegistration("a", ""), nil); err != nil {
		t.Fatal(err)
	}
	rewrite := func(bucket, key string, f func(rec map[string]any)) {
		t.Helper()
		err := s.db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket([]byte(bucket))
			var rec map[string]any
			if err := json.Unmarshal(b.Get([]byte(key)), &rec); err != nil {
				return err
			}
			f(rec)
			v, _ := json.Marshal(rec)
			return b.Put([]byte(key), v)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Flip one bit of the registration's sealed hub key.
	rewrite(bktRegistrations, "a", func(rec map[string]any) {
		sealed, _ := base64.StdEncoding.DecodeString(rec["sealed"].(string))
		sealed[len(sealed)-1] ^= 1
		rec["sealed"] = base64.StdEncoding.EncodeToString(sealed)
	})
	if _, err := s.GetRegistration(ctx, "a"); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("tampered hub key: %v", err)
	}
	// Move b's sealed keys into a: bound to b, so a fails.
	var sealedB any
	_ = s.db.View(func(tx *bbolt.Tx) error {
		var rec map[string]any
		_ = json.Unmarshal(tx.Bucket([]byte(bktEnrollments)).Get([]byte("b")), &rec)
		sealedB = rec["sealed"]
		return nil
	})
	rewrite(bktEnrollments, "a", func(rec map[string]any) { rec["sealed"] = sealedB })
	if _, err := s.GetEnrollment(ctx, "a"); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("swapped ciphertext: %v", err)
	}
	if _, err := s.ListEnrollments(ctx, store.Query{}); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("list with a swapped ciphertext: %v", err)
	}
	if _, err := s.GetEnrollment(ctx, "b"); err != nil {
		t.Fatalf("untouched record: %v", err)
	}
	// Putting over a corrupt record repairs it.
	if _, err := s.PutEnrollment(ctx, storetest.FullEnrollment("a"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetEnrollment(ctx, "a"); err != nil {
		t.Fatal(err)
	}
}

func TestLockTimeoutNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locked.db")
	s := openAt(t, path, nil)
	_, err := Open(path, Options{Timeout: 200 * time.Millisecond})
	if err == nil {
		t.Fatal("second open of a locked file succeeded")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("lock error: %v", err)
	}
	// Once closed, the file opens again.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openAt(t, path, nil)
	if err := s2.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestSchemaNewerRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.db")
	s := openAt(t, path, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bktMeta)).Put([]byte(metaVersion), u64(SchemaVersion+41))
	})
	_ = db.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(path, Options{Timeout: time.Second})
	if !errors.Is(err, ErrSchema) {
		t.Fatalf("newer schema: %v", err)
	}
	for _, want := range []string{path, fmt.Sprintf("version %d", SchemaVersion+41), fmt.Sprintf("version %d", SchemaVersion)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestSchemaUpgradeFromVersion0(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v0.db")
	// A version 0 file: record buckets only, no meta, secrets in the clear.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e := storetest.FullEnrollment("Old-Dev")
	e.ETag = "v0etag"
	g := storetest.FullGroup("old-group")
	regs := []*store.Registration{
		{RegistrationID: "r1", Status: store.RegistrationAssigned, EnrollmentGroupID: "Old-Group", ETag: "x"},
		{RegistrationID: "r2", Status: store.RegistrationAssigned, EnrollmentGroupID: "old-group", ETag: "y"},
		{RegistrationID: "r3", Status: store.RegistrationAssigned, ETag: "z"},
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		put := func(bucket, key string, v any) error {
			b, err := tx.CreateBucketIfNotExists([]byte(bucket))
			if err != nil {
				return err
			}
			data, err := json.Marshal(v)
			if err != nil {
				return err
			}
			return b.Put([]byte(key), data)
		}
		if err := put(bktEnrollments, "old-dev", e); err != nil {
			return err
		}
		if err := put(bktGroups, "old-group", g); err != nil {
			return err
		}
		for _, r := range regs {
			if err := put(bktRegistrations, r.RegistrationID, r); err != nil {
				return err
			}
		}
		// Pre-release files may hold used challenge references too.
		c, err := tx.CreateBucket([]byte(v1BktChallenges))
		if err != nil {
			return err
		}
		return c.Put([]byte("old-ref"), u64(uint64(time.Now().Add(time.Hour).UnixNano())))
	})
	_ = db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if found := rawContains(t, path, map[string][]byte{"k": []byte(e.Attestation.SymmetricKey.PrimaryKey)}); len(found) != 1 {
		t.Fatal("test setup: version 0 file should hold the key in the clear")
	}
	s := openAt(t, path, nil)
	if err := s.Check(); err != nil {
		t.Fatalf("after upgrade: %v", err)
	}
	got, err := s.GetEnrollment(ctx, "old-dev")
	if err != nil {
		t.Fatal(err)
	}
	if got.ETag != "v0etag" || !reflect.DeepEqual(got.Attestation.SymmetricKey, e.Attestation.SymmetricKey) || got.RegistrationID != "Old-Dev" {
		t.Fatalf("upgraded enrollment: %+v", got)
	}
	gg, err := s.GetGroup(ctx, "OLD-GROUP")
	if err != nil || !reflect.DeepEqual(gg.Attestation.SymmetricKey, g.Attestation.SymmetricKey) {
		t.Fatalf("upgraded group: %+v %v", gg, err)
	}
	if n, _ := s.CountGroupRegistrations(ctx, "old-group"); n != 2 {
		t.Fatalf("group registrations after upgrade: %d", n)
	}
	if n, _ := s.CountEnrollments(ctx); n != 1 {
		t.Fatalf("enrollments after upgrade: %d", n)
	}
	err = s.db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket([]byte(bktMeta)).Get([]byte(metaVersion)); !bytes.Equal(v, u64(SchemaVersion)) {
			return fmt.Errorf("version %x", v)
		}
		if tx.Bucket([]byte(v1BktChallenges)) != nil {
			return fmt.Errorf("bucket %s survived the upgrade", v1BktChallenges)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The live record must be sealed. (bbolt does not scrub freed pages: the
	// migration logs a warning to compact the file; see doc.go.)
	db, err = bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket([]byte(bktEnrollments)).Get([]byte("old-dev"))
		if bytes.Contains(v, []byte(e.Attestation.SymmetricKey.PrimaryKey)) || !bytes.Contains(v, []byte(`"sealed"`)) {
			return fmt.Errorf("record not sealed after upgrade: %s", v)
		}
		return nil
	})
	_ = db.Close()
	if err != nil {
		t.Fatal(err)
	}
	// A second open is a no-op upgrade.
	s2 := openAt(t, path, nil)
	if _, err := s2.GetEnrollment(ctx, "old-dev"); err != nil {
		t.Fatal(err)
	}
}

func TestCheckDetectsDamage(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, nil)
	if _, err := s.RecordRegistration(ctx, storetest.FullRegistration("r1", "g1"), storetest.FullOperation("op1", "r1", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	const ek = "AToAAQALAAMAsgAg"
	if _, err := s.PutEnrollment(ctx, &store.Enrollment{RegistrationID: "E1", EnrollmentSettings: store.EnrollmentSettings{
		Attestation: store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: ek}}}}, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, bucket, key, want string
	}{
		{"group index entry", bktGroupRegs, "g1\x00r1", bktGroupRegs},
		{"registration counter", bktCounts, bktRegistrations, bktCounts},
		{"endorsement key index entry", bktEKIndex, string(ekIndexKey(ek, []byte("e1"))), bktEKIndex},
	} {
		err := s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte(c.bucket)).Delete([]byte(c.key)) })
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s removed: Check() = %v", c.name, err)
		}
	}
}
