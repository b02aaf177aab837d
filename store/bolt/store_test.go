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
	"sync"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
)

// testClock is a settable clock for one test.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// openTest opens a store in a fresh temporary directory and closes it at the end.
func openTest(t testing.TB, clock *testClock) *Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dpsd.db")
	return openAt(t, path, clock)
}

func openAt(t testing.TB, path string, clock *testClock) *Store {
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

func fullEnrollment(id string) *store.Enrollment {
	return &store.Enrollment{
		RegistrationID: id,
		DeviceID:       "dev-" + id,
		Attestation: store.Attestation{
			Type:         store.AttestationSymmetricKey,
			SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: "cHJpbWFyeS1zZWNyZXQta2V5LTAxMjM0NTY3ODkwMTIz", SecondaryKey: "c2Vjb25kYXJ5LXNlY3JldC1rZXktOTg3NjU0MzIxMDk4"},
			TPM:          &store.TPMAttestation{EndorsementKey: "AToAAQALAAMAsgAg", StorageRootKey: "AToAAQALAAMAcgAA"},
			X509: &store.X509Attestation{
				ClientCertificates: &store.X509Certificates{
					Primary: &store.X509CertificateWithInfo{Certificate: "MIIB", Info: &store.X509CertificateInfo{
						SubjectName: "CN=dev", SHA1Thumbprint: "AA", SHA256Thumbprint: "BB", IssuerName: "CN=ca",
						NotBefore: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
						SerialNumber: "01", Version: 3}},
					Secondary: &store.X509CertificateWithInfo{Certificate: "MIIC"},
				},
				SigningCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: "MIID"}},
				CAReferences:        &store.X509CAReferences{Primary: "ca1", Secondary: "ca2"},
			},
		},
		IoTHubHostName:             "hub1.example.net",
		IoTHubs:                    []string{"hub1.example.net", "hub2.example.net"},
		AllocationPolicy:           "hashed",
		ProvisioningStatus:         store.StatusEnabled,
		InitialTwin:                json.RawMessage(`{"tags":{"a":1},"properties":{"desired":{"b":"c"}}}`),
		Capabilities:               &store.Capabilities{IoTEdge: true},
		ReprovisionPolicy:          &store.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true},
		CustomAllocationDefinition: &store.CustomAllocationDefinition{WebhookURL: "https://alloc.example/x", APIVersion: "2019-03-31"},
	}
}

func fullGroup(id string) *store.Group {
	e := fullEnrollment(id)
	return &store.Group{
		EnrollmentGroupID: id, Attestation: e.Attestation, IoTHubHostName: e.IoTHubHostName, IoTHubs: e.IoTHubs,
		AllocationPolicy: e.AllocationPolicy, ProvisioningStatus: store.StatusDisabled, InitialTwin: e.InitialTwin,
		Capabilities: e.Capabilities, ReprovisionPolicy: e.ReprovisionPolicy, CustomAllocationDefinition: e.CustomAllocationDefinition,
	}
}

func fullRegistration(id, group string) *store.Registration {
	return &store.Registration{
		RegistrationID: id, Status: store.RegistrationAssigned, Substatus: "initialAssignment", AssignedHub: "hub1.example.net",
		DeviceID: "dev-" + id, ErrorCode: 400209, ErrorMessage: "none", AttestationType: store.AttestationTPM,
		EnrollmentGroupID: group, Payload: json.RawMessage(`{"x":[1,2,3]}`),
		HubKey:          []byte("hub-key-secret-0123456789abcdef!"),
		AttestationHash: []byte("attestation-hash-0123456789abcde"),
	}
}

func fullOperation(id, reg string, exp time.Time) *store.Operation {
	return &store.Operation{ID: id, RegistrationID: reg, Status: store.RegistrationAssigned, ErrorCode: 401002, ErrorMessage: "msg",
		AuthenticationKey: []byte{1, 2, 3, 4, 5}, CreatedAt: exp.Add(-time.Minute).UTC(), ExpiresAt: exp.UTC()}
}

// sameJSON compares two records through their JSON form plus extra fields.
func sameJSON(t *testing.T, what string, got, want any) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if !bytes.Equal(g, w) {
		t.Fatalf("%s:\n got %s\nwant %s", what, g, w)
	}
}

func TestEnrollmentRoundTrip(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s := openTest(t, clock)
	in := fullEnrollment("Device-ABC")
	orig, _ := json.Marshal(in)
	put, err := s.PutEnrollment(ctx, in, "")
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
	sameJSON(t, "put result", put, &want)
	for _, id := range []string{"device-abc", "DEVICE-ABC", "Device-ABC"} {
		got, err := s.GetEnrollment(ctx, id)
		if err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		sameJSON(t, "get "+id, got, &want)
		if !reflect.DeepEqual(got.Attestation.SymmetricKey, in.Attestation.SymmetricKey) {
			t.Fatalf("symmetric keys: %+v", got.Attestation.SymmetricKey)
		}
	}
	// Update: created preserved, updated and etag change.
	clock.Advance(time.Hour)
	in2 := fullEnrollment("device-abc")
	in2.DeviceID = "other"
	put2, err := s.PutEnrollment(ctx, in2, put.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if put2.ETag == put.ETag || !put2.CreatedAt.Equal(put.CreatedAt) || !put2.UpdatedAt.Equal(clock.Now()) {
		t.Fatalf("update: etag %q->%q created %v updated %v", put.ETag, put2.ETag, put2.CreatedAt, put2.UpdatedAt)
	}
	got, err := s.GetEnrollment(ctx, "DEVICE-abc")
	if err != nil || got.DeviceID != "other" || got.ETag != put2.ETag || got.RegistrationID != "device-abc" {
		t.Fatalf("after update: %+v, %v", got, err)
	}
	if n, err := s.CountEnrollments(ctx); err != nil || n != 1 {
		t.Fatalf("count = %d, %v", n, err)
	}
	// Minimal record without secrets round-trips too.
	min := &store.Enrollment{RegistrationID: "tpm1", Attestation: store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: "ek"}}}
	pm, err := s.PutEnrollment(ctx, min, "*")
	if err != nil {
		t.Fatal(err)
	}
	gm, err := s.GetEnrollment(ctx, "TPM1")
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, "minimal", gm, pm)
	if gm.Attestation.SymmetricKey != nil {
		t.Fatal("symmetric key appeared")
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestGroupRoundTrip(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s := openTest(t, clock)
	in := fullGroup("Group-One")
	put, err := s.PutGroup(ctx, in, "")
	if err != nil {
		t.Fatal(err)
	}
	want := *in
	want.ETag, want.CreatedAt, want.UpdatedAt = put.ETag, clock.Now(), clock.Now()
	sameJSON(t, "put", put, &want)
	got, err := s.GetGroup(ctx, "group-one")
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, "get", got, &want)
	clock.Advance(time.Minute)
	put2, err := s.PutGroup(ctx, fullGroup("GROUP-ONE"), "*")
	if err != nil || !put2.CreatedAt.Equal(put.CreatedAt) || put2.ETag == put.ETag {
		t.Fatalf("update: %+v %v", put2, err)
	}
	if _, err := s.PutGroup(ctx, fullGroup("group-one"), put.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale put: %v", err)
	}
	if n, _ := s.CountGroups(ctx); n != 1 {
		t.Fatalf("count %d", n)
	}
	if err := s.DeleteGroup(ctx, "group-one", put.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale delete: %v", err)
	}
	if err := s.DeleteGroup(ctx, "Group-One", put2.ETag); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetGroup(ctx, "group-one"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s.DeleteGroup(ctx, "group-one", ""); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	if n, _ := s.CountGroups(ctx); n != 0 {
		t.Fatalf("count %d", n)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestRegistrationAndOperationRoundTrip(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s := openTest(t, clock)
	r := fullRegistration("Reg-1", "Group-A")
	op := fullOperation("op-1", "Reg-1", clock.Now().Add(time.Minute))
	got, err := s.RecordRegistration(ctx, r, op)
	if err != nil {
		t.Fatal(err)
	}
	want := *r
	want.ETag, want.CreatedAt, want.UpdatedAt = got.ETag, clock.Now(), clock.Now()
	sameJSON(t, "record", got, &want)
	if !bytes.Equal(got.HubKey, r.HubKey) {
		t.Fatal("hub key not returned")
	}
	back, err := s.GetRegistration(ctx, "REG-1")
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, "get", back, &want)
	if !bytes.Equal(back.HubKey, r.HubKey) || back.RegistrationID != "Reg-1" {
		t.Fatalf("hub key/id: %q %q", back.HubKey, back.RegistrationID)
	}
	if !bytes.Equal(got.AttestationHash, r.AttestationHash) || !bytes.Equal(back.AttestationHash, r.AttestationHash) {
		t.Fatalf("attestation hash: returned %q, read back %q", got.AttestationHash, back.AttestationHash)
	}
	if j, _ := json.Marshal(back); bytes.Contains(j, r.AttestationHash) || bytes.Contains(j, []byte("attestationHash")) {
		t.Fatalf("the attestation hash is in the record's JSON (the service API's shape): %s", j)
	}
	gop, err := s.GetOperation(ctx, "op-1")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gop, op) {
		t.Fatalf("operation: %+v want %+v", gop, op)
	}
	if _, err := s.GetOperation(ctx, "OP-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("operation ids are case-sensitive: %v", err)
	}
	// Second registration: created preserved, group index moves.
	clock.Advance(time.Second)
	r2 := fullRegistration("reg-1", "group-b")
	r2.HubKey, r2.AttestationHash = nil, nil
	got2, err := s.RecordRegistration(ctx, r2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := s.GetRegistration(ctx, "reg-1"); err != nil || back.AttestationHash != nil || back.HubKey != nil {
		t.Fatalf("a record written without hub key and hash keeps the old ones: %+v, %v", back, err)
	}
	if !got2.CreatedAt.Equal(got.CreatedAt) || got2.ETag == got.ETag {
		t.Fatalf("re-record: %+v", got2)
	}
	if n, _ := s.CountGroupRegistrations(ctx, "group-a"); n != 0 {
		t.Fatalf("group-a count %d", n)
	}
	if n, _ := s.CountGroupRegistrations(ctx, "GROUP-B"); n != 1 {
		t.Fatalf("group-b count %d", n)
	}
	p, err := s.ListGroupRegistrations(ctx, "group-a", store.Query{})
	if err != nil || len(p.Items) != 0 {
		t.Fatalf("group-a list %v %v", p.Items, err)
	}
	p, err = s.ListGroupRegistrations(ctx, "Group-B", store.Query{})
	if err != nil || len(p.Items) != 1 || p.Items[0].HubKey != nil || p.Items[0].EnrollmentGroupID != "group-b" {
		t.Fatalf("group-b list %+v %v", p.Items, err)
	}
	// Leaving every group.
	r3 := fullRegistration("reg-1", "")
	if _, err := s.RecordRegistration(ctx, r3, nil); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.CountGroupRegistrations(ctx, "group-b"); n != 0 {
		t.Fatalf("group-b count %d", n)
	}
	if _, err := s.RecordRegistration(ctx, fullRegistration("reg-1", "group-a"), nil); err != nil {
		t.Fatal(err)
	}
	cur, _ := s.GetRegistration(ctx, "reg-1")
	if err := s.DeleteRegistration(ctx, "reg-1", got.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale delete: %v", err)
	}
	if err := s.DeleteRegistration(ctx, "REG-1", `"`+cur.ETag+`"`); err != nil {
		t.Fatalf("delete with quoted etag: %v", err)
	}
	if n, _ := s.CountGroupRegistrations(ctx, "group-a"); n != 0 {
		t.Fatalf("group-a count after delete %d", n)
	}
	if _, err := s.GetRegistration(ctx, "reg-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if err := s.DeleteRegistration(ctx, "reg-1", ""); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestETagConflicts(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, nil)
	// Put-if-absent semantics: a specific etag on a missing record fails and creates nothing.
	if _, err := s.PutEnrollment(ctx, fullEnrollment("e1"), "some-etag"); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("etag on missing: %v", err)
	}
	if _, err := s.GetEnrollment(ctx, "e1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("created anyway: %v", err)
	}
	v1, err := s.PutEnrollment(ctx, fullEnrollment("e1"), "")
	if err != nil {
		t.Fatal(err)
	}
	v2, err := s.PutEnrollment(ctx, fullEnrollment("e1"), v1.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutEnrollment(ctx, fullEnrollment("e1"), v1.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale put: %v", err)
	}
	if err := s.DeleteEnrollment(ctx, "e1", v1.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale delete: %v", err)
	}
	if got, _ := s.GetEnrollment(ctx, "e1"); got.ETag != v2.ETag {
		t.Fatal("stale write changed the record")
	}
	if err := s.DeleteEnrollment(ctx, "E1", v2.ETag); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteEnrollment(ctx, "e1", v2.ETag); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	// An etag of a deleted incarnation does not match the next one.
	v3, err := s.PutEnrollment(ctx, fullEnrollment("e1"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutEnrollment(ctx, fullEnrollment("e1"), v2.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("old incarnation etag: %v", err)
	}
	seen := map[string]bool{v1.ETag: true, v2.ETag: true, v3.ETag: true}
	if len(seen) != 3 {
		t.Fatal("etags repeat")
	}
	if n, _ := s.CountEnrollments(ctx); n != 1 {
		t.Fatalf("count %d", n)
	}
}

func TestInvalidInput(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, nil)
	for _, id := range []string{"", "a\x00b", strings.Repeat("x", store.MaxIDLength+1)} {
		if _, err := s.PutEnrollment(ctx, &store.Enrollment{RegistrationID: id}, ""); !errors.Is(err, store.ErrInvalidID) {
			t.Errorf("put %q: %v", id, err)
		}
		if _, err := s.GetGroup(ctx, id); !errors.Is(err, store.ErrInvalidID) || !errors.Is(err, store.ErrNotFound) {
			t.Errorf("get group %q: %v", id, err)
		}
		if err := s.DeleteEnrollment(ctx, id, ""); !errors.Is(err, store.ErrInvalidID) || !errors.Is(err, store.ErrNotFound) {
			t.Errorf("delete enrollment %q: %v", id, err)
		}
	}
	if _, err := s.PutEnrollment(ctx, nil, ""); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("nil: %v", err)
	}
	if _, err := s.PutEnrollment(ctx, &store.Enrollment{RegistrationID: "x", InitialTwin: json.RawMessage("{bad")}, ""); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("bad twin: %v", err)
	}
	if err := s.PutOperation(ctx, &store.Operation{ID: "op"}); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("no expiry: %v", err)
	}
	if _, err := s.RecordRegistration(ctx, fullRegistration("r", ""), &store.Operation{ID: "op"}); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("record with bad op: %v", err)
	}
	if _, err := s.GetRegistration(ctx, "r"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("registration written despite bad op: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.PutEnrollment(cctx, fullEnrollment("c"), ""); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: %v", err)
	}
	if _, err := s.GetEnrollment(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("cancelled put wrote: %v", err)
	}
}

// pageAll walks a listing page by page and returns every id seen.
func pageAll[T any](t *testing.T, max int, list func(store.Query) (store.Page[T], error), id func(T) string) []string {
	t.Helper()
	var ids []string
	q := store.Query{MaxItems: max}
	for pages := 0; ; pages++ {
		if pages > 100000 {
			t.Fatal("listing does not end")
		}
		p, err := list(q)
		if err != nil {
			t.Fatal(err)
		}
		limit := max
		if limit <= 0 {
			limit = store.DefaultMaxItems
		}
		if len(p.Items) > limit {
			t.Fatalf("page of %d items, max %d", len(p.Items), limit)
		}
		for _, it := range p.Items {
			ids = append(ids, id(it))
		}
		if p.Continuation == "" {
			return ids
		}
		if len(p.Items) == 0 {
			t.Fatal("empty page with a continuation")
		}
		q.Continuation = p.Continuation
	}
}

func checkExactlyOnce(t *testing.T, what string, got []string, want map[string]bool) {
	t.Helper()
	seen := map[string]bool{}
	for _, id := range got {
		if seen[id] {
			t.Fatalf("%s: %s listed twice", what, id)
		}
		if !want[id] {
			t.Fatalf("%s: unexpected %s", what, id)
		}
		seen[id] = true
	}
	if len(seen) != len(want) {
		t.Fatalf("%s: saw %d of %d", what, len(seen), len(want))
	}
}

func TestPaging(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, nil)
	const n = 3001
	wantE, wantG, wantR := map[string]bool{}, map[string]bool{}, map[string]bool{}
	var es []*store.Enrollment
	for i := range n {
		id := fmt.Sprintf("Dev-%05d", i*7919%n)
		es = append(es, &store.Enrollment{RegistrationID: id, Attestation: store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: "ek"}}})
		wantE[id] = true
	}
	if _, err := s.PutEnrollments(ctx, es); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 1500; i += 8 {
				gid := fmt.Sprintf("grp-%04d", i)
				if _, err := s.PutGroup(ctx, &store.Group{EnrollmentGroupID: gid}, ""); err != nil {
					errs <- err
					return
				}
				// Registrations of "big" (1200) and a few of other groups around it.
				rid := fmt.Sprintf("r-%05d", i)
				grp := "big"
				if i%5 == 0 {
					grp = "big0" // shares a prefix with "big": must not leak into big's listing
				}
				if _, err := s.RecordRegistration(ctx, &store.Registration{RegistrationID: rid, Status: store.RegistrationAssigned, EnrollmentGroupID: grp}, nil); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				wantG[gid] = true
				if grp == "big" {
					wantR[rid] = true
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, max := range []int{0, 1, 7, 1000, 5000} {
		ids := pageAll(t, max, func(q store.Query) (store.Page[*store.Enrollment], error) { return s.ListEnrollments(ctx, q) },
			func(e *store.Enrollment) string { return e.RegistrationID })
		checkExactlyOnce(t, fmt.Sprintf("enrollments max=%d", max), ids, wantE)
	}
	gids := pageAll(t, 13, func(q store.Query) (store.Page[*store.Group], error) { return s.ListGroups(ctx, q) },
		func(g *store.Group) string { return g.EnrollmentGroupID })
	checkExactlyOnce(t, "groups", gids, wantG)
	rids := pageAll(t, 17, func(q store.Query) (store.Page[*store.Registration], error) {
		return s.ListGroupRegistrations(ctx, "BIG", q)
	},
		func(r *store.Registration) string { return r.RegistrationID })
	checkExactlyOnce(t, "group registrations", rids, wantR)
	if c, _ := s.CountEnrollments(ctx); c != n {
		t.Fatalf("enrollment count %d", c)
	}
	if c, _ := s.CountGroups(ctx); c != len(wantG) {
		t.Fatalf("group count %d", c)
	}
	if c, _ := s.CountGroupRegistrations(ctx, "big"); c != len(wantR) {
		t.Fatalf("big count %d want %d", c, len(wantR))
	}
	if c, _ := s.CountGroupRegistrations(ctx, "big0"); c != 1500-len(wantR) {
		t.Fatalf("big0 count %d", c)
	}
	// The last page exactly filled: no dangling continuation.
	p, err := s.ListGroups(ctx, store.Query{MaxItems: 1000})
	if err != nil || p.Continuation == "" {
		t.Fatal(err)
	}
	p, err = s.ListGroups(ctx, store.Query{MaxItems: 1000, Continuation: p.Continuation})
	if err != nil || len(p.Items) != 500 || p.Continuation != "" {
		t.Fatalf("last page: %d items, %q, %v", len(p.Items), p.Continuation, err)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestBadContinuation(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, nil)
	for i := range 3 {
		if _, err := s.RecordRegistration(ctx, &store.Registration{RegistrationID: fmt.Sprint("r", i), EnrollmentGroupID: "g"}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.PutEnrollment(ctx, &store.Enrollment{RegistrationID: fmt.Sprint("e", i)}, ""); err != nil {
			t.Fatal(err)
		}
	}
	p, err := s.ListEnrollments(ctx, store.Query{MaxItems: 1})
	if err != nil || p.Continuation == "" {
		t.Fatal(err)
	}
	gp, err := s.ListGroupRegistrations(ctx, "g", store.Query{MaxItems: 1})
	if err != nil || gp.Continuation == "" {
		t.Fatal(err)
	}
	bad := []string{"!!!", "%%", base64.RawURLEncoding.EncodeToString([]byte("x")), p.Continuation + "=", gp.Continuation}
	for _, tok := range bad {
		if _, err := s.ListEnrollments(ctx, store.Query{Continuation: tok}); !errors.Is(err, store.ErrBadContinuation) {
			t.Errorf("enrollments with %q: %v", tok, err)
		}
	}
	if _, err := s.ListGroups(ctx, store.Query{Continuation: p.Continuation}); !errors.Is(err, store.ErrBadContinuation) {
		t.Errorf("enrollment token accepted by groups: %v", err)
	}
	if _, err := s.ListGroupRegistrations(ctx, "other", store.Query{Continuation: gp.Continuation}); !errors.Is(err, store.ErrBadContinuation) {
		t.Errorf("token of group g accepted for group other: %v", err)
	}
	if _, err := s.ListGroupRegistrations(ctx, "G", store.Query{Continuation: gp.Continuation}); err != nil {
		t.Errorf("token of group g refused for G: %v", err)
	}
}

func TestOperationExpiryAndSweep(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s := openTest(t, clock)
	exp := clock.Now().Add(time.Minute)
	if err := s.PutOperation(ctx, fullOperation("op-a", "r", exp)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutOperation(ctx, fullOperation("op-b", "r", exp.Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	// Re-putting moves the expiry: op-c first expires early, then is extended.
	if err := s.PutOperation(ctx, fullOperation("op-c", "r", exp)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutOperation(ctx, fullOperation("op-c", "r", exp.Add(2*time.Hour))); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Sweep(ctx, clock.Now()); err != nil || n != 0 {
		t.Fatalf("early sweep: %d %v", n, err)
	}
	clock.Advance(time.Minute) // now == exp: expired
	if _, err := s.GetOperation(ctx, "op-a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired operation: %v", err)
	}
	if _, err := s.GetOperation(ctx, "op-c"); err != nil {
		t.Fatalf("extended operation: %v", err)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	n, err := s.Sweep(ctx, clock.Now())
	if err != nil || n != 1 { // op-a
		t.Fatalf("sweep: %d %v", n, err)
	}
	if n, _ := s.Sweep(ctx, clock.Now()); n != 0 {
		t.Fatalf("second sweep: %d", n)
	}
	if _, err := s.GetOperation(ctx, "op-b"); err != nil {
		t.Fatalf("unexpired operation swept: %v", err)
	}
	n, err = s.Sweep(ctx, clock.Now().Add(24*time.Hour))
	if err != nil || n != 2 { // op-b, op-c
		t.Fatalf("final sweep: %d %v", n, err)
	}
	if _, err := s.GetOperation(ctx, "op-b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	err = s.db.View(func(tx *bbolt.Tx) error {
		for _, b := range []string{bktExpiry, bktOperations} {
			if k := tx.Bucket([]byte(b)).Stats().KeyN; k != 0 {
				return fmt.Errorf("%s has %d keys", b, k)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSweepManyChunks(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s := openTest(t, clock)
	const n = sweepChunk + 2345
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for i := range n {
			op := fullOperation(fmt.Sprint("op", i), "r", clock.Now().Add(time.Duration(i)*time.Millisecond))
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
	e := fullEnrollment("enc-e")
	g := fullGroup("enc-g")
	g.Attestation.SymmetricKey = &store.SymmetricKeyAttestation{PrimaryKey: "Z3JvdXAtcHJpbWFyeS1rZXktc2VjcmV0LTAwMDAwMA==", SecondaryKey: "Z3JvdXAtc2Vjb25kYXJ5LWtleS1zZWNyZXQtMTExMQ=="}
	r := fullRegistration("enc-r", "enc-g")
	if _, err := s.PutEnrollment(ctx, e, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutGroup(ctx, g, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordRegistration(ctx, r, nil); err != nil {
		t.Fatal(err)
	}
	needles := map[string][]byte{}
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
	if _, err := s.PutEnrollment(ctx, fullEnrollment("a"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutEnrollment(ctx, fullEnrollment("b"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordRegistration(ctx, fullRegistration("a", ""), nil); err != nil {
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
	if _, err := s.PutEnrollment(ctx, fullEnrollment("a"), ""); err != nil {
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

func TestCloseWaitsAndRefuses(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, nil)
	var wg sync.WaitGroup
	acked := make(chan string, 1000)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				if _, err := s.RecordRegistration(ctx, &store.Registration{RegistrationID: id}, nil); err != nil {
					if !errors.Is(err, store.ErrClosed) {
						t.Errorf("record: %v", err)
					}
					return
				}
				select {
				case acked <- id:
				default:
				}
			}
		}()
	}
	<-acked // writers are running
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if _, err := s.GetEnrollment(ctx, "x"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
	if err := s.Close(); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
	if err := s.Check(); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("check after close: %v", err)
	}
	// Everything acknowledged before Close is there.
	close(acked)
	s2 := openAt(t, s.Path(), nil)
	for id := range acked {
		if _, err := s2.GetRegistration(ctx, id); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
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
	e := fullEnrollment("Old-Dev")
	e.ETag = "v0etag"
	g := fullGroup("old-group")
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

func TestBackupRestore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "live.db")
	s := openAt(t, path, nil)
	for i := range 200 {
		if _, err := s.PutEnrollment(ctx, fullEnrollment(fmt.Sprint("e", i)), ""); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RecordRegistration(ctx, fullRegistration(fmt.Sprint("r", i), "g"), nil); err != nil {
			t.Fatal(err)
		}
	}
	// Writers keep going during the backup: the copy is a consistent snapshot.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.RecordRegistration(ctx, fullRegistration(fmt.Sprint("live", i), "g"), nil); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var buf bytes.Buffer
	n, err := s.Backup(ctx, &buf)
	close(stop)
	wg.Wait()
	if err != nil || n != int64(buf.Len()) {
		t.Fatalf("backup: %d %v", n, err)
	}
	restored := filepath.Join(t.TempDir(), "restored.db")
	if err := os.WriteFile(restored, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(path + ".key")
	if err := os.WriteFile(restored+".key", key, 0o600); err != nil {
		t.Fatal(err)
	}
	r := openAt(t, restored, nil)
	if err := r.Check(); err != nil {
		t.Fatalf("restored copy: %v", err)
	}
	for i := range 200 {
		e, err := r.GetEnrollment(ctx, fmt.Sprint("e", i))
		if err != nil || e.Attestation.SymmetricKey.PrimaryKey == "" {
			t.Fatalf("restored e%d: %v", i, err)
		}
		reg, err := r.GetRegistration(ctx, fmt.Sprint("r", i))
		if err != nil || len(reg.HubKey) == 0 {
			t.Fatalf("restored r%d: %v", i, err)
		}
	}
	if n, _ := r.CountEnrollments(ctx); n != 200 {
		t.Fatalf("restored count %d", n)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Backup(cctx, &bytes.Buffer{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled backup: %v", err)
	}
}

func TestPutEnrollmentsBulk(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s := openTest(t, clock)
	first, err := s.PutEnrollment(ctx, fullEnrollment("m"), "")
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	in := []*store.Enrollment{fullEnrollment("z"), fullEnrollment("M"), fullEnrollment("a"), fullEnrollment("Z")}
	in[3].DeviceID = "last-wins"
	out, err := s.PutEnrollments(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		if out[i].RegistrationID != in[i].RegistrationID || out[i].ETag == "" {
			t.Fatalf("result %d: %+v", i, out[i])
		}
	}
	if !out[1].CreatedAt.Equal(first.CreatedAt) || !out[1].UpdatedAt.Equal(clock.Now()) {
		t.Fatalf("created not preserved: %v", out[1].CreatedAt)
	}
	z, err := s.GetEnrollment(ctx, "z")
	if err != nil || z.DeviceID != "last-wins" || z.ETag != out[3].ETag {
		t.Fatalf("duplicate in one bulk call: %+v %v", z, err)
	}
	if n, _ := s.CountEnrollments(ctx); n != 3 {
		t.Fatalf("count %d", n)
	}
	// All or nothing: one bad item writes nothing.
	if _, err := s.PutEnrollments(ctx, []*store.Enrollment{fullEnrollment("new"), {RegistrationID: ""}}); !errors.Is(err, store.ErrInvalidID) {
		t.Fatalf("bad item: %v", err)
	}
	if _, err := s.GetEnrollment(ctx, "new"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("partial bulk write: %v", err)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestCheckDetectsDamage(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, nil)
	if _, err := s.RecordRegistration(ctx, fullRegistration("r1", "g1"), fullOperation("op1", "r1", time.Now().Add(time.Hour))); err != nil {
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
