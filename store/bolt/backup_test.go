package bolt

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/storetest"
)

// TestVerifyCopy: a backup passes; a cut copy, bytes that are no bbolt file
// and a bbolt file that is not a store fail with store.ErrCorrupt.
func TestVerifyCopy(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, nil)
	if _, err := s.PutEnrollment(ctx, storetest.FullEnrollment("e1"), ""); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := s.Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if err := VerifyCopy(write("good.db", buf.Bytes())); err != nil {
		t.Fatalf("a backup: %v", err)
	}
	foreign := filepath.Join(dir, "foreign.db")
	db, err := bbolt.Open(foreign, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{
		"cut":     write("cut.db", buf.Bytes()[:4096]),
		"half":    write("half.db", buf.Bytes()[:buf.Len()/2]),
		"short":   write("short.db", buf.Bytes()[:buf.Len()-4096]),
		"garbage": write("garbage.db", bytes.Repeat([]byte("not a database "), 1000)),
		"empty":   write("empty.db", nil),
		"foreign": foreign,
	} {
		if err := VerifyCopy(path); !errors.Is(err, store.ErrCorrupt) {
			t.Errorf("%s copy: %v, want store.ErrCorrupt", name, err)
		}
	}
}
