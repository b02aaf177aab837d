package store_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/storetest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) []byte {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s changed:\n got %s\nwant %s", name, got, want)
	}
	return want
}

// TestRecordJSONUnchanged: the JSON of the records (the service API's
// shape and the engines' stored form) is byte for byte what it was when the
// golden files were written, field order included, and the golden bytes
// decode back to the same record.
func TestRecordJSONUnchanged(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	e := storetest.FullEnrollment("Golden-E")
	e.ETag, e.CreatedAt, e.UpdatedAt = "etag-e", at, at.Add(time.Hour)
	g := storetest.FullGroup("Golden-G")
	g.ETag, g.CreatedAt, g.UpdatedAt = "etag-g", at, at.Add(2*time.Hour)
	minimal := &store.Enrollment{RegistrationID: "min", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: "ek"}}}}
	for name, c := range map[string]struct {
		rec  any
		into func() any
	}{
		"enrollment.json":         {e, func() any { return new(store.Enrollment) }},
		"group.json":              {g, func() any { return new(store.Group) }},
		"enrollment-minimal.json": {minimal, func() any { return new(store.Enrollment) }},
	} {
		got, err := json.Marshal(c.rec)
		if err != nil {
			t.Fatal(err)
		}
		want := golden(t, name, got)
		back := c.into()
		if err := json.Unmarshal(want, back); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		again, err := json.Marshal(back)
		if err != nil || !bytes.Equal(again, want) {
			t.Fatalf("%s does not decode to the same record: %s %v", name, again, err)
		}
	}
}
