package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store/storetest"
)

var update = flag.Bool("update", false, "rewrite testdata/records-flat.db and its golden JSON")

// The file testdata/records-flat.db (key: testdata/records-flat.db.key) was
// written by the build before store.Enrollment and store.Group embedded
// store.EnrollmentSettings, when their fields were flat.
const (
	flatDB     = "testdata/records-flat.db"
	flatGolden = "testdata/records-flat.json"
)

// writeFlatDB rewrites the golden file with this build (-update).
func writeFlatDB(t *testing.T) {
	ctx := context.Background()
	_ = os.Remove(flatDB)
	key := make([]byte, DataKeySize)
	for i := range key {
		key[i] = byte(i)
	}
	if err := os.WriteFile(flatDB+".key", key, 0o600); err != nil {
		t.Fatal(err)
	}
	clock := storetest.NewClock()
	s, err := Open(flatDB, Options{Timeout: time.Second, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.PutEnrollment(ctx, storetest.FullEnrollment("Golden-E"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutGroup(ctx, storetest.FullGroup("Golden-G"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordRegistration(ctx, storetest.FullRegistration("Golden-R", "golden-g"), nil); err != nil {
		t.Fatal(err)
	}
	out, err := readFlat(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(flatGolden, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// readFlat reads the three records as JSON lines.
func readFlat(s *Store) ([]byte, error) {
	ctx := context.Background()
	e, err := s.GetEnrollment(ctx, "golden-e")
	if err != nil {
		return nil, err
	}
	g, err := s.GetGroup(ctx, "golden-g")
	if err != nil {
		return nil, err
	}
	r, err := s.GetRegistration(ctx, "golden-r")
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	for _, v := range []any{e, g, r} {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		out.Write(b)
		out.WriteByte('\n')
	}
	return out.Bytes(), nil
}

// TestRecordsWrittenFlat: records written before the embedded struct read
// back exactly as then (secrets included), and their stored values are what
// this build writes: decoding and encoding a value gives the same bytes.
func TestRecordsWrittenFlat(t *testing.T) {
	if *update {
		writeFlatDB(t)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "flat.db")
	for from, to := range map[string]string{flatDB: path, flatDB + ".key": path + ".key"} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := openAt(t, path, nil)
	got, err := readFlat(s)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(flatGolden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("records of the flat file read back differently:\n got %s\nwant %s", got, want)
	}
	if e, _ := s.GetEnrollment(context.Background(), "golden-e"); e.Attestation.SymmetricKey.PrimaryKey != storetest.FullEnrollment("").Attestation.SymmetricKey.PrimaryKey {
		t.Fatal("sealed keys of the flat file lost")
	}
	err = s.db.View(func(tx *bbolt.Tx) error {
		for bucket, reencode := range map[string]func(v []byte) ([]byte, error){
			bktEnrollments: func(v []byte) ([]byte, error) {
				var rec enrollmentRecord
				if err := json.Unmarshal(v, &rec); err != nil {
					return nil, err
				}
				return json.Marshal(rec)
			},
			bktGroups: func(v []byte) ([]byte, error) {
				var rec groupRecord
				if err := json.Unmarshal(v, &rec); err != nil {
					return nil, err
				}
				return json.Marshal(rec)
			},
		} {
			n := 0
			err := tx.Bucket([]byte(bucket)).ForEach(func(k, v []byte) error {
				n++
				again, err := reencode(v)
				if err != nil {
					return err
				}
				if !bytes.Equal(again, v) {
					return fmt.Errorf("%s/%s stored as\n%s\nre-encoded as\n%s", bucket, k, v, again)
				}
				return nil
			})
			if err != nil {
				return err
			}
			if n != 1 {
				return fmt.Errorf("%s: %d records", bucket, n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
