package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// enrollmentRoundTrip: a stored enrollment reads back whole under any case
// of its id, secrets included; the write returns the record with its new
// etag and times and leaves its argument alone; an update keeps the
// creation time.
func (s *suite) enrollmentRoundTrip(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	in := FullEnrollment("Device-ABC")
	orig, _ := json.Marshal(in)
	put, err := st.PutEnrollment(ctx, in, "")
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := json.Marshal(in); !bytes.Equal(orig, after) {
		t.Fatal("PutEnrollment modified its argument")
	}
	if put.ETag == "" || !put.CreatedAt.Equal(clock.Now()) || !put.UpdatedAt.Equal(clock.Now()) {
		t.Fatalf("stored etag/times: %q %v %v", put.ETag, put.CreatedAt, put.UpdatedAt)
	}
	if put.RegistrationID != "Device-ABC" {
		t.Fatalf("id changed: %q", put.RegistrationID)
	}
	want := *in
	want.ETag, want.CreatedAt, want.UpdatedAt = put.ETag, put.CreatedAt, put.UpdatedAt
	SameJSON(t, "put result", put, &want)
	for _, id := range []string{"device-abc", "DEVICE-ABC", "Device-ABC"} {
		got, err := st.GetEnrollment(ctx, id)
		if err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		SameJSON(t, "get "+id, got, &want)
		if !reflect.DeepEqual(got.Attestation.SymmetricKey, in.Attestation.SymmetricKey) {
			t.Fatalf("symmetric keys: %+v", got.Attestation.SymmetricKey)
		}
	}
	// A returned record is the caller's: changing it changes nothing stored.
	put.Attestation.SymmetricKey.PrimaryKey = "changed"
	if got, _ := st.GetEnrollment(ctx, "device-abc"); got.Attestation.SymmetricKey.PrimaryKey != in.Attestation.SymmetricKey.PrimaryKey {
		t.Fatal("the returned record shares memory with the stored one")
	}
	// Update: created preserved, updated and etag change.
	clock.Advance(time.Hour)
	in2 := FullEnrollment("device-abc")
	in2.DeviceID = "other"
	put2, err := st.PutEnrollment(ctx, in2, want.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if put2.ETag == want.ETag || !put2.CreatedAt.Equal(want.CreatedAt) || !put2.UpdatedAt.Equal(clock.Now()) {
		t.Fatalf("update: etag %q->%q created %v updated %v", want.ETag, put2.ETag, put2.CreatedAt, put2.UpdatedAt)
	}
	got, err := st.GetEnrollment(ctx, "DEVICE-abc")
	if err != nil || got.DeviceID != "other" || got.ETag != put2.ETag || got.RegistrationID != "device-abc" {
		t.Fatalf("after update: %+v, %v", got, err)
	}
	if n, err := st.CountEnrollments(ctx); err != nil || n != 1 {
		t.Fatalf("count = %d, %v", n, err)
	}
	// A minimal record without secrets round-trips too.
	minimal := &store.Enrollment{RegistrationID: "tpm1", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: "ek"}}}}
	pm, err := st.PutEnrollment(ctx, minimal, "*")
	if err != nil {
		t.Fatal(err)
	}
	gm, err := st.GetEnrollment(ctx, "TPM1")
	if err != nil {
		t.Fatal(err)
	}
	SameJSON(t, "minimal", gm, pm)
	if gm.Attestation.SymmetricKey != nil {
		t.Fatal("symmetric key appeared")
	}
	if n, err := st.CountEnrollments(ctx); err != nil || n != 2 {
		t.Fatalf("count = %d, %v", n, err)
	}
	if err := st.DeleteEnrollment(ctx, "Tpm1", ""); err != nil {
		t.Fatal(err)
	}
	if n, err := st.CountEnrollments(ctx); err != nil || n != 1 {
		t.Fatalf("count after delete = %d, %v", n, err)
	}
	s.check(t, st)
}

// groupRoundTrip: the same for enrollment groups, with conditional writes
// and deletes.
func (s *suite) groupRoundTrip(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	in := FullGroup("Group-One")
	put, err := st.PutGroup(ctx, in, "")
	if err != nil {
		t.Fatal(err)
	}
	want := *in
	want.ETag, want.CreatedAt, want.UpdatedAt = put.ETag, clock.Now(), clock.Now()
	SameJSON(t, "put", put, &want)
	got, err := st.GetGroup(ctx, "group-one")
	if err != nil {
		t.Fatal(err)
	}
	SameJSON(t, "get", got, &want)
	if !reflect.DeepEqual(got.Attestation.SymmetricKey, in.Attestation.SymmetricKey) {
		t.Fatalf("group keys: %+v", got.Attestation.SymmetricKey)
	}
	clock.Advance(time.Minute)
	put2, err := st.PutGroup(ctx, FullGroup("GROUP-ONE"), "*")
	if err != nil || !put2.CreatedAt.Equal(put.CreatedAt) || !put2.UpdatedAt.Equal(clock.Now()) || put2.ETag == put.ETag {
		t.Fatalf("update: %+v %v", put2, err)
	}
	if _, err := st.PutGroup(ctx, FullGroup("group-one"), put.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale put: %v", err)
	}
	if n, _ := st.CountGroups(ctx); n != 1 {
		t.Fatalf("count %d", n)
	}
	if err := st.DeleteGroup(ctx, "group-one", put.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale delete: %v", err)
	}
	if err := st.DeleteGroup(ctx, "Group-One", put2.ETag); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetGroup(ctx, "group-one"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := st.DeleteGroup(ctx, "group-one", ""); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	if n, _ := st.CountGroups(ctx); n != 0 {
		t.Fatalf("count %d", n)
	}
	s.check(t, st)
}

// registrationAndOperation: a registration record and its operation
// round-trip (HubKey and AttestationHash kept, the hash never in JSON),
// the group index follows the record from group to group and out of
// every group, and operation ids are case-sensitive.
func (s *suite) registrationAndOperation(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	r := FullRegistration("Reg-1", "Group-A")
	op := FullOperation("op-1", "Reg-1", clock.Now().Add(time.Minute))
	got, err := st.RecordRegistration(ctx, r, op)
	if err != nil {
		t.Fatal(err)
	}
	want := *r
	want.ETag, want.CreatedAt, want.UpdatedAt = got.ETag, clock.Now(), clock.Now()
	SameJSON(t, "record", got, &want)
	if !bytes.Equal(got.HubKey, r.HubKey) {
		t.Fatal("hub key not returned")
	}
	back, err := st.GetRegistration(ctx, "REG-1")
	if err != nil {
		t.Fatal(err)
	}
	SameJSON(t, "get", back, &want)
	if !bytes.Equal(back.HubKey, r.HubKey) || back.RegistrationID != "Reg-1" {
		t.Fatalf("hub key/id: %q %q", back.HubKey, back.RegistrationID)
	}
	if !bytes.Equal(got.AttestationHash, r.AttestationHash) || !bytes.Equal(back.AttestationHash, r.AttestationHash) {
		t.Fatalf("attestation hash: returned %q, read back %q", got.AttestationHash, back.AttestationHash)
	}
	if j, _ := json.Marshal(back); bytes.Contains(j, r.AttestationHash) || bytes.Contains(j, []byte("attestationHash")) ||
		bytes.Contains(j, r.HubKey) || bytes.Contains(j, []byte("hubKey")) {
		t.Fatalf("a secret or the attestation hash is in the record's JSON (the service API's shape): %s", j)
	}
	gop, err := st.GetOperation(ctx, "op-1")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gop, op) {
		t.Fatalf("operation: %+v want %+v", gop, op)
	}
	if _, err := st.GetOperation(ctx, "OP-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("operation ids are case-sensitive: %v", err)
	}
	// Second registration: created preserved, group index moves.
	clock.Advance(time.Second)
	r2 := FullRegistration("reg-1", "group-b")
	r2.HubKey, r2.AttestationHash = nil, nil
	got2, err := st.RecordRegistration(ctx, r2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := st.GetRegistration(ctx, "reg-1"); err != nil || back.AttestationHash != nil || back.HubKey != nil {
		t.Fatalf("a record written without hub key and hash keeps the old ones: %+v, %v", back, err)
	}
	if !got2.CreatedAt.Equal(got.CreatedAt) || !got2.UpdatedAt.Equal(clock.Now()) || got2.ETag == got.ETag {
		t.Fatalf("re-record: %+v", got2)
	}
	if n, _ := st.CountGroupRegistrations(ctx, "group-a"); n != 0 {
		t.Fatalf("group-a count %d", n)
	}
	if n, _ := st.CountGroupRegistrations(ctx, "GROUP-B"); n != 1 {
		t.Fatalf("group-b count %d", n)
	}
	p, err := st.ListGroupRegistrations(ctx, "group-a", store.Query{})
	if err != nil || len(p.Items) != 0 || p.Continuation != "" {
		t.Fatalf("group-a list %v %q %v", p.Items, p.Continuation, err)
	}
	p, err = st.ListGroupRegistrations(ctx, "Group-B", store.Query{})
	if err != nil || len(p.Items) != 1 || p.Items[0].HubKey != nil || p.Items[0].EnrollmentGroupID != "group-b" {
		t.Fatalf("group-b list %+v %v", p.Items, err)
	}
	// Leaving every group.
	if _, err := st.RecordRegistration(ctx, FullRegistration("reg-1", ""), nil); err != nil {
		t.Fatal(err)
	}
	if n, _ := st.CountGroupRegistrations(ctx, "group-b"); n != 0 {
		t.Fatalf("group-b count %d", n)
	}
	if _, err := st.RecordRegistration(ctx, FullRegistration("reg-1", "group-a"), nil); err != nil {
		t.Fatal(err)
	}
	// The group's registrations stay listed after the group is gone.
	if _, err := st.PutGroup(ctx, FullGroup("group-a"), ""); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteGroup(ctx, "group-a", ""); err != nil {
		t.Fatal(err)
	}
	if n, _ := st.CountGroupRegistrations(ctx, "group-a"); n != 1 {
		t.Fatalf("group-a count after the group was deleted: %d", n)
	}
	cur, err := st.GetRegistration(ctx, "reg-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteRegistration(ctx, "reg-1", got.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale delete: %v", err)
	}
	if err := st.DeleteRegistration(ctx, "REG-1", `"`+cur.ETag+`"`); err != nil {
		t.Fatalf("delete with quoted etag: %v", err)
	}
	if n, _ := st.CountGroupRegistrations(ctx, "group-a"); n != 0 {
		t.Fatalf("group-a count after delete %d", n)
	}
	if _, err := st.GetRegistration(ctx, "reg-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if err := st.DeleteRegistration(ctx, "reg-1", ""); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	// A registration is not an enrollment: the two kinds do not see each other.
	if _, err := st.GetEnrollment(ctx, "reg-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	s.check(t, st)
}

// etags: If-Match "" and "*" are unconditional, any other value must be
// the stored etag (bare or HTTP-quoted), also on delete; a specific etag on
// a missing record fails and creates nothing; an etag of a deleted
// incarnation never matches the next one.
func (s *suite) etags(t *testing.T) {
	ctx := context.Background()
	st := s.open(t, nil)
	if _, err := st.PutEnrollment(ctx, FullEnrollment("e1"), "some-etag"); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("etag on missing: %v", err)
	}
	if _, err := st.GetEnrollment(ctx, "e1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("created anyway: %v", err)
	}
	if _, err := st.PutGroup(ctx, FullGroup("g1"), `"some-etag"`); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("group etag on missing: %v", err)
	}
	if _, err := st.GetGroup(ctx, "g1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("group created anyway: %v", err)
	}
	if err := st.DeleteEnrollment(ctx, "e1", "some-etag"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete missing with an etag: %v", err)
	}
	v1, err := st.PutEnrollment(ctx, FullEnrollment("e1"), "")
	if err != nil {
		t.Fatal(err)
	}
	v2, err := st.PutEnrollment(ctx, FullEnrollment("e1"), v1.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutEnrollment(ctx, FullEnrollment("e1"), v1.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale put: %v", err)
	}
	if err := st.DeleteEnrollment(ctx, "e1", v1.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale delete: %v", err)
	}
	if got, _ := st.GetEnrollment(ctx, "e1"); got.ETag != v2.ETag {
		t.Fatal("stale write changed the record")
	}
	v3, err := st.PutEnrollment(ctx, FullEnrollment("E1"), `W/"`+v2.ETag+`"`)
	if err != nil {
		t.Fatalf("weak quoted etag: %v", err)
	}
	v4, err := st.PutEnrollment(ctx, FullEnrollment("e1"), "*")
	if err != nil || v4.ETag == v3.ETag {
		t.Fatalf("unconditional put: %+v %v", v4, err)
	}
	if err := st.DeleteEnrollment(ctx, "E1", `"`+v4.ETag+`"`); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteEnrollment(ctx, "e1", v4.ETag); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	// An etag of a deleted incarnation does not match the next one.
	v5, err := st.PutEnrollment(ctx, FullEnrollment("e1"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutEnrollment(ctx, FullEnrollment("e1"), v4.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("old incarnation etag: %v", err)
	}
	seen := map[string]bool{}
	for _, v := range []*store.Enrollment{v1, v2, v3, v4, v5} {
		seen[v.ETag] = true
	}
	if len(seen) != 5 {
		t.Fatal("etags repeat")
	}
	if n, _ := st.CountEnrollments(ctx); n != 1 {
		t.Fatalf("count %d", n)
	}
	// Unconditional delete.
	if err := st.DeleteEnrollment(ctx, "e1", "*"); err != nil {
		t.Fatal(err)
	}
	if n, _ := st.CountEnrollments(ctx); n != 0 {
		t.Fatalf("count %d", n)
	}
	s.check(t, st)
}

// invalidInput: bad ids are ErrInvalidID (with ErrNotFound on reads and
// deletes), bad records ErrInvalidRecord, a cancelled context writes nothing.
func (s *suite) invalidInput(t *testing.T) {
	ctx := context.Background()
	st := s.open(t, nil)
	for _, id := range []string{"", "a\x00b", strings.Repeat("x", store.MaxIDLength+1)} {
		if _, err := st.PutEnrollment(ctx, &store.Enrollment{RegistrationID: id}, ""); !errors.Is(err, store.ErrInvalidID) {
			t.Errorf("put %q: %v", id, err)
		}
		if _, err := st.PutGroup(ctx, &store.Group{EnrollmentGroupID: id}, ""); !errors.Is(err, store.ErrInvalidID) {
			t.Errorf("put group %q: %v", id, err)
		}
		if _, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: id}, nil); !errors.Is(err, store.ErrInvalidID) {
			t.Errorf("record registration %q: %v", id, err)
		}
		if _, err := st.GetGroup(ctx, id); !errors.Is(err, store.ErrInvalidID) || !errors.Is(err, store.ErrNotFound) {
			t.Errorf("get group %q: %v", id, err)
		}
		if _, err := st.GetEnrollment(ctx, id); !errors.Is(err, store.ErrInvalidID) || !errors.Is(err, store.ErrNotFound) {
			t.Errorf("get enrollment %q: %v", id, err)
		}
		if err := st.DeleteEnrollment(ctx, id, ""); !errors.Is(err, store.ErrInvalidID) || !errors.Is(err, store.ErrNotFound) {
			t.Errorf("delete enrollment %q: %v", id, err)
		}
		if _, err := st.GetOperation(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("get operation %q: %v", id, err)
		}
	}
	// The longest valid id works.
	long := strings.Repeat("y", store.MaxIDLength)
	if _, err := st.PutEnrollment(ctx, &store.Enrollment{RegistrationID: long}, ""); err != nil {
		t.Errorf("an id of %d bytes: %v", store.MaxIDLength, err)
	}
	if _, err := st.PutEnrollment(ctx, nil, ""); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("nil: %v", err)
	}
	if _, err := st.PutGroup(ctx, nil, ""); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("nil group: %v", err)
	}
	if _, err := st.RecordRegistration(ctx, nil, nil); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("nil registration: %v", err)
	}
	if err := st.PutOperation(ctx, nil); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("nil operation: %v", err)
	}
	if _, err := st.PutEnrollment(ctx, &store.Enrollment{RegistrationID: "x", EnrollmentSettings: store.EnrollmentSettings{InitialTwin: json.RawMessage("{bad")}}, ""); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("bad twin: %v", err)
	}
	if err := st.PutOperation(ctx, &store.Operation{ID: "op"}); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("no expiry: %v", err)
	}
	if _, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: "p", Payload: json.RawMessage("{bad")}, nil); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("bad payload: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := st.PutEnrollment(cctx, FullEnrollment("c"), ""); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: %v", err)
	}
	if _, err := st.GetEnrollment(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("cancelled put wrote: %v", err)
	}
	if n, _ := st.CountEnrollments(ctx); n != 1 {
		t.Errorf("count %d, want 1 (the long id)", n)
	}
	s.check(t, st)
}

// recordRegistrationIsAtomic: RecordRegistration writes the record and its
// operation in one step. With an invalid operation neither is written; and
// a reader running beside the writer never sees one without the other.
func (s *suite) recordRegistrationIsAtomic(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	if _, err := st.RecordRegistration(ctx, FullRegistration("r", ""), &store.Operation{ID: "op"}); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("record with bad op: %v", err)
	}
	if _, err := st.GetRegistration(ctx, "r"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("registration written despite bad op: %v", err)
	}
	if _, err := st.GetOperation(ctx, "op"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("operation written despite its error: %v", err)
	}
	const n = 150
	exp := clock.Now().Add(time.Hour)
	done := make(chan error, 1)
	go func() {
		for i := range n {
			id := fmt.Sprint("atom-", i)
			if _, err := st.RecordRegistration(ctx, FullRegistration(id, "g"), FullOperation("op-"+id, id, exp)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	// Read each pair in both orders while the writer runs: whichever of the
	// two is seen first, the other must already be there.
	seen := 0
	for i := 0; i < n; {
		id := fmt.Sprint("atom-", i)
		_, regErr := st.GetRegistration(ctx, id)
		if regErr == nil {
			if _, err := st.GetOperation(ctx, "op-"+id); err != nil {
				t.Fatalf("registration %s visible without its operation: %v", id, err)
			}
		}
		_, opErr := st.GetOperation(ctx, "op-"+id)
		if opErr == nil {
			if _, err := st.GetRegistration(ctx, id); err != nil {
				t.Fatalf("operation of %s visible without its registration: %v", id, err)
			}
		}
		if regErr == nil && opErr == nil {
			seen++
			i++
			continue
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			done <- nil // the writer finished: keep reading to the end
		default:
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if seen != n {
		t.Fatalf("saw %d of %d pairs", seen, n)
	}
	s.check(t, st)
}
