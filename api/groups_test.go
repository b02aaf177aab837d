package api

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/store"
)

func TestGroups(t *testing.T) {
	env := newTestEnv(t)
	g := decodeAs[store.Group](t, env.request(http.MethodPut, "/enrollmentGroups/Line-1",
		map[string]any{"attestation": map[string]any{"type": "symmetricKey"}, "iotHubHostName": "hub.example.net"}, nil))
	if g.EnrollmentGroupID != "line-1" || g.Attestation.SymmetricKey == nil || g.ETag == "" {
		t.Fatalf("group %+v", g)
	}
	keys := decodeAs[store.Attestation](t, env.request(http.MethodPost, "/enrollmentGroups/line-1/attestationmechanism", nil, nil)).SymmetricKey
	if keys == nil || keys.PrimaryKey == "" || keys.SecondaryKey == "" {
		t.Fatalf("group keys %+v", keys)
	}
	pemText, _ := testCert(t, "Factory CA")
	x := decodeAs[store.Group](t, env.request(http.MethodPut, "/enrollmentGroups/line-2", map[string]any{"attestation": map[string]any{"type": "x509",
		"x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]any{"certificate": pemText}}}}}, nil))
	if x.Attestation.X509.SigningCertificates.Primary.Info.SubjectName != "CN=Factory CA" {
		t.Fatalf("x509 group %+v", x.Attestation.X509)
	}
	// A TPM group admits by EK certificates, never by one EK (tpmgroup_test.go).
	env.request(http.MethodPut, "/enrollmentGroups/line-3", map[string]any{"attestation": map[string]any{"type": "tpm",
		"tpm": map[string]any{"endorsementKey": testEK(t)}}}, nil).expectError(t, 400, codeInvalidArgument)
	env.request(http.MethodPut, "/enrollmentGroups/line-3", map[string]any{"attestation": map[string]any{"type": "x509",
		"x509": map[string]any{"clientCertificates": map[string]any{"primary": map[string]any{"certificate": pemText}}}}}, nil).
		expectError(t, 400, codeInvalidArgument)
	env.request(http.MethodPut, "/enrollmentGroups/line-1", map[string]any{"attestation": map[string]any{"type": "symmetricKey"}},
		map[string]string{"If-Match": "old"}).expectError(t, 412, codePreconditionFailed)

	got := decodeAs[store.Group](t, env.request(http.MethodGet, "/enrollmentGroups/LINE-1", nil, nil))
	if got.ETag != g.ETag || got.Attestation.Type != store.AttestationSymmetricKey {
		t.Fatalf("GET group %+v", got)
	}
	page := decodeAs[[]store.Group](t, env.request(http.MethodPost, "/enrollmentGroups/query", `{"query":"*"}`, nil))
	if len(page) != 2 {
		t.Fatalf("query: %d groups", len(page))
	}
	res := decodeAs[wire.BulkResult](t, env.request(http.MethodPost, "/enrollmentGroups", map[string]any{"mode": "create",
		"enrollmentGroups": []any{
			map[string]any{"enrollmentGroupId": "line-1", "attestation": map[string]any{"type": "symmetricKey"}},
			map[string]any{"enrollmentGroupId": "line-4", "attestation": map[string]any{"type": "symmetricKey"}},
		}}, nil))
	if res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].EnrollmentGroupID != "line-1" || res.Errors[0].ErrorCode != codeConflict {
		t.Fatalf("bulk groups %+v", res)
	}
	if r := env.request(http.MethodDelete, "/enrollmentGroups/line-1", nil, nil); r.status != 204 {
		t.Fatalf("delete group: %d %s", r.status, r.body)
	}
	env.request(http.MethodGet, "/enrollmentGroups/line-1", nil, nil).expectError(t, 404, codeGroupNotFound)
	if !strings.Contains(env.logs.String(), `"kind":"enrollmentGroup"`) {
		t.Fatal("no audit line for the group")
	}
}

func TestRegistrations(t *testing.T) {
	env := newTestEnv(t)
	for i, id := range []string{"dev-1", "dev-2", "dev-3"} {
		reg := &store.Registration{RegistrationID: id, Status: store.RegistrationAssigned, AssignedHub: "hub.example.net",
			DeviceID: id, EnrollmentGroupID: "line-1", AttestationType: store.AttestationSymmetricKey,
			HubKey: []byte("very-secret-hub-key-material-0001")}
		if i == 2 {
			reg.EnrollmentGroupID = "line-2"
		}
		op := &store.Operation{ID: "op-" + id, RegistrationID: id, Status: store.RegistrationAssigned,
			CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}
		if _, err := env.st.RecordRegistration(t.Context(), reg, op); err != nil {
			t.Fatal(err)
		}
	}
	r := env.request(http.MethodGet, "/registrations/DEV-1", nil, nil)
	reg := decodeAs[store.Registration](t, r)
	if reg.AssignedHub != "hub.example.net" || reg.Status != "assigned" || r.header.Get("ETag") == "" {
		t.Fatalf("registration %+v", reg)
	}
	if strings.Contains(string(r.body), "very-secret") || strings.Contains(strings.ToLower(string(r.body)), "hubkey") {
		t.Fatalf("hub key serialised: %s", r.body)
	}
	// Registrations of group line-1, one per page.
	seen := map[string]bool{}
	cont := ""
	for range 5 {
		hdr := map[string]string{"x-ms-max-item-count": "1"}
		if cont != "" {
			hdr["x-ms-continuation"] = cont
		}
		r := env.request(http.MethodPost, "/registrations/line-1/query", "", hdr)
		for _, x := range decodeAs[[]store.Registration](t, r) {
			seen[x.RegistrationID] = true
		}
		if cont = r.header.Get("x-ms-continuation"); cont == "" {
			break
		}
	}
	if len(seen) != 2 || !seen["dev-1"] || !seen["dev-2"] {
		t.Fatalf("group registrations %v", seen)
	}
	env.request(http.MethodDelete, "/registrations/dev-1", nil, map[string]string{"If-Match": "nope"}).expectError(t, 412, codePreconditionFailed)
	if r := env.request(http.MethodDelete, "/registrations/dev-1", nil, nil); r.status != 204 {
		t.Fatalf("delete registration: %d %s", r.status, r.body)
	}
	env.request(http.MethodGet, "/registrations/dev-1", nil, nil).expectError(t, 404, codeRegistrationMissing)
	env.request(http.MethodDelete, "/registrations/dev-1", nil, nil).expectError(t, 404, codeRegistrationMissing)
	if !strings.Contains(env.logs.String(), `"kind":"registration"`) {
		t.Fatal("no audit line for the registration delete")
	}
}

// The record times are the store's: times a body carries are ignored when
// enrollments and groups are decoded.
func TestDecodeIgnoresRecordTimes(t *testing.T) {
	const ts = `"createdDateTimeUtc":"2026-01-02T03:04:05+02:00","lastUpdatedDateTimeUtc":"2026-01-02T03:04:05-05:00"`
	g, err := DecodeGroup([]byte(`{"enrollmentGroupId":"g",` + ts + `}`))
	if err != nil {
		t.Fatal(err)
	}
	e, err := DecodeEnrollment([]byte(`{"registrationId":"r",` + ts + `}`))
	if err != nil {
		t.Fatal(err)
	}
	for name, tm := range map[string]time.Time{"group created": g.CreatedAt, "group updated": g.UpdatedAt,
		"enrollment created": e.CreatedAt, "enrollment updated": e.UpdatedAt} {
		if !tm.IsZero() {
			t.Errorf("%s: %v taken from the body", name, tm)
		}
	}
}
