package apiclient

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/api"
	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/bolt"
)

const testHost = "dps.client.test"

// server starts the real API (and its backup endpoint) over HTTPS on a bbolt
// store and returns a connection string of the owner policy and one of a
// read-only policy.
func server(t *testing.T) (srv *httptest.Server, st *bolt.Store, owner, reader string) {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "dps.db"), bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ok, rk := make([]byte, 32), make([]byte, 32)
	rand.Read(ok)
	rand.Read(rk)
	cfg := api.Config{Store: st, HostName: testHost, Policies: []api.Policy{
		{Name: api.DefaultPolicyName, Key: ok, Rights: api.RightAll},
		{Name: "reader", Key: rk, Rights: api.RightRead},
	}}
	h, err := api.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	bh, err := api.NewBackup(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(wire.BackupPath, bh)
	mux.Handle("/", h)
	srv = httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	owner = fmt.Sprintf("HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s", testHost, api.DefaultPolicyName, base64.StdEncoding.EncodeToString(ok))
	reader = fmt.Sprintf("HostName=%s;SharedAccessKeyName=reader;SharedAccessKey=%s", testHost, base64.StdEncoding.EncodeToString(rk))
	return srv, st, owner, reader
}

func newClient(t *testing.T, srv *httptest.Server, cs string) *Client {
	t.Helper()
	c, err := New(cs, Options{BaseURL: srv.URL, HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseConnectionString(t *testing.T) {
	cs, err := ParseConnectionString(" hostname=dps.example.com; SharedAccessKeyName=owner;SharedAccessKey=AAECAwQFBgcICQoLDA0ODw==;Extra=1")
	if err != nil || cs.HostName != "dps.example.com" || cs.KeyName != "owner" || len(cs.Key) != 16 {
		t.Fatalf("%+v %v", cs, err)
	}
	if back, err := ParseConnectionString(cs.String()); err != nil || back.HostName != cs.HostName || string(back.Key) != string(cs.Key) {
		t.Fatalf("round trip %+v %v", back, err)
	}
	for _, bad := range []string{"", "HostName=a;SharedAccessKeyName=b", "HostName=a;SharedAccessKey=AAAA", "SharedAccessKeyName=b;SharedAccessKey=AAAA",
		"HostName=a;SharedAccessKeyName=b;SharedAccessKey=!!", "HostName"} {
		if _, err := ParseConnectionString(bad); !errors.Is(err, ErrConnectionString) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if _, err := New("HostName=a;SharedAccessKeyName=b;SharedAccessKey=AAAA", Options{BaseURL: "ftp://x"}); err == nil {
		t.Error("ftp base URL accepted")
	}
}

func TestClientEnrollments(t *testing.T) {
	srv, _, owner, reader := server(t)
	c := newClient(t, srv, owner)
	ctx := t.Context()

	e, err := c.PutEnrollment(ctx, &store.Enrollment{RegistrationID: "Dev-1", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	if e.RegistrationID != "dev-1" || e.Attestation.Type != store.AttestationSymmetricKey || e.ETag == "" {
		t.Fatalf("put %+v", e)
	}
	// Keys come only from the attestation mechanism, and only for the write right.
	keys, err := c.GetEnrollmentAttestation(ctx, "DEV-1")
	if err != nil || keys.SymmetricKey == nil || keys.SymmetricKey.PrimaryKey == "" || keys.SymmetricKey.SecondaryKey == "" {
		t.Fatalf("attestation %+v %v", keys, err)
	}
	if _, err := newClient(t, srv, reader).GetEnrollmentAttestation(ctx, "dev-1"); !IsStatus(err, 403) {
		t.Fatalf("reader attestation: %v", err)
	}
	got, err := c.GetEnrollment(ctx, "dev-1")
	if err != nil || got.ETag != e.ETag || got.Attestation.SymmetricKey == nil || got.Attestation.SymmetricKey.PrimaryKey != "" {
		t.Fatalf("get %+v %v", got, err)
	}
	got.ProvisioningStatus = store.StatusDisabled
	upd, err := c.PutEnrollment(ctx, got, got.ETag)
	if err != nil || upd.ProvisioningStatus != store.StatusDisabled {
		t.Fatalf("conditional put %+v %v", upd, err)
	}
	// The record read without keys and written back keeps its keys.
	if kept, err := c.GetEnrollmentAttestation(ctx, "dev-1"); err != nil || *kept.SymmetricKey != *keys.SymmetricKey {
		t.Fatalf("keys after a get/put round trip: %+v %v", kept, err)
	}
	// Stale etag: typed 412.
	_, err = c.PutEnrollment(ctx, got, e.ETag)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 412 || ae.ErrorCode != 412002 || ae.TrackingID == "" || ae.Message == "" {
		t.Fatalf("stale put: %#v", err)
	}
	if err := c.DeleteEnrollment(ctx, "dev-1", e.ETag); !IsStatus(err, 412) {
		t.Fatalf("stale delete: %v", err)
	}
	if err := c.DeleteEnrollment(ctx, "dev-1", upd.ETag); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetEnrollment(ctx, "dev-1"); !errors.As(err, &ae) || ae.Status != 404 || ae.ErrorCode != 404201 {
		t.Fatalf("get deleted: %v", err)
	}
	// Read-only policy: reads pass, writes are refused.
	rc := newClient(t, srv, reader)
	if _, err := rc.GetEnrollment(ctx, "dev-1"); !IsStatus(err, 404) {
		t.Fatalf("reader get: %v", err)
	}
	if _, err := rc.PutEnrollment(ctx, e, ""); !IsStatus(err, 403) {
		t.Fatalf("reader put: %v", err)
	}
	// Wrong key: 401.
	bad := strings.Replace(owner, "SharedAccessKey=", "SharedAccessKey=AAAA", 1)
	if _, err := newClient(t, srv, bad).GetEnrollment(ctx, "dev-1"); !IsStatus(err, 401) {
		t.Fatalf("bad key: %v", err)
	}
	// Expired token (the client's clock is two hours behind).
	old, err := New(owner, Options{BaseURL: srv.URL, HTTPClient: srv.Client(), Now: func() time.Time { return time.Now().Add(-2 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.GetEnrollment(ctx, "dev-1"); !IsStatus(err, 401) {
		t.Fatalf("expired: %v", err)
	}
}

func TestClientBulkAndPaging(t *testing.T) {
	srv, _, owner, _ := server(t)
	c := newClient(t, srv, owner)
	ctx := t.Context()
	const n = 1500
	var es []*store.Enrollment
	for i := range n {
		es = append(es, &store.Enrollment{RegistrationID: fmt.Sprintf("dev-%04d", i), EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey}}})
	}
	es = append(es, &store.Enrollment{RegistrationID: "bad/id", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey}}})
	res, err := c.BulkEnrollments(ctx, BulkCreate, es)
	if err != nil {
		t.Fatal(err)
	}
	if res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].RegistrationID != "bad/id" || res.Errors[0].ErrorCode/1000 != 400 {
		t.Fatalf("bulk %+v", res)
	}
	seen := map[string]int{}
	if err := c.EachEnrollment(ctx, 200, func(e *store.Enrollment) error { seen[e.RegistrationID]++; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(seen) != n {
		t.Fatalf("%d distinct enrollments", len(seen))
	}
	for id, k := range seen {
		if k != 1 {
			t.Fatalf("%s seen %d times", id, k)
		}
	}
	page, next, err := c.QueryEnrollments(ctx, 10, "")
	if err != nil || len(page) != 10 || next == "" {
		t.Fatalf("first page: %d %q %v", len(page), next, err)
	}
	stop := errors.New("stop")
	if err := c.EachEnrollment(ctx, 10, func(*store.Enrollment) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("callback error not returned: %v", err)
	}
}

func TestClientGroupsAndRegistrations(t *testing.T) {
	srv, st, owner, _ := server(t)
	c := newClient(t, srv, owner)
	ctx := t.Context()
	g, err := c.PutGroup(ctx, &store.Group{EnrollmentGroupID: "line-1", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey}}}, "")
	if err != nil || g.Attestation.Type != store.AttestationSymmetricKey {
		t.Fatalf("put group %+v %v", g, err)
	}
	if a, err := c.GetGroupAttestation(ctx, "line-1"); err != nil || a.SymmetricKey == nil || a.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("group attestation %+v %v", a, err)
	}
	if got, err := c.GetGroup(ctx, "line-1"); err != nil || got.ETag != g.ETag {
		t.Fatalf("get group %+v %v", got, err)
	}
	res, err := c.BulkGroups(ctx, BulkCreate, []*store.Group{{EnrollmentGroupID: "line-1", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey}}},
		{EnrollmentGroupID: "line-2", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey}}}})
	if err != nil || len(res.Errors) != 1 || res.Errors[0].EnrollmentGroupID != "line-1" || res.Errors[0].ErrorCode/1000 != 409 {
		t.Fatalf("bulk groups %+v %v", res, err)
	}
	var ids []string
	if err := c.EachGroup(ctx, 1, func(g *store.Group) error { ids = append(ids, g.EnrollmentGroupID); return nil }); err != nil || len(ids) != 2 {
		t.Fatalf("groups %v %v", ids, err)
	}
	for _, id := range []string{"dev-a", "dev-b"} {
		_, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: id, Status: store.RegistrationAssigned, EnrollmentGroupID: "line-1", AssignedHub: "hub.example.net"},
			&store.Operation{ID: "op-" + id, RegistrationID: id, Status: store.RegistrationAssigned, CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
	}
	regs, _, err := c.QueryRegistrations(ctx, "line-1", 0, "")
	if err != nil || len(regs) != 2 {
		t.Fatalf("registrations %d %v", len(regs), err)
	}
	r, err := c.GetRegistration(ctx, "dev-a")
	if err != nil || r.AssignedHub != "hub.example.net" {
		t.Fatalf("registration %+v %v", r, err)
	}
	if err := c.DeleteRegistration(ctx, "dev-a", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetRegistration(ctx, "dev-a"); !IsStatus(err, http.StatusNotFound) {
		t.Fatalf("deleted registration: %v", err)
	}
	n := 0
	if err := c.EachRegistration(ctx, "line-1", 1, func(*store.Registration) error { n++; return nil }); err != nil || n != 1 {
		t.Fatalf("EachRegistration %d %v", n, err)
	}
	if err := c.DeleteGroup(ctx, "line-2", ""); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteGroup(ctx, "line-2", ""); !IsStatus(err, 404) {
		t.Fatalf("second delete: %v", err)
	}
}
