package api

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/store"
)

func TestEnrollmentLifecycle(t *testing.T) {
	env := newTestEnv(t)
	// Create with generated keys; mixed-case id is stored lowercased.
	r := env.request(http.MethodPut, "/enrollments/Dev-A", symEnrollment("Dev-A"), nil)
	e := decodeAs[store.Enrollment](t, r)
	if e.RegistrationID != "dev-a" || e.ProvisioningStatus != store.StatusEnabled || e.ETag == "" {
		t.Fatalf("created %+v", e)
	}
	if got := r.header.Get("ETag"); got != `"`+e.ETag+`"` {
		t.Fatalf("ETag header %q, body etag %q", got, e.ETag)
	}
	if e.Attestation.SymmetricKey == nil || *e.Attestation.SymmetricKey != (store.SymmetricKeyAttestation{}) {
		t.Fatalf("the PUT answer carries keys: %+v", e.Attestation.SymmetricKey)
	}
	// The generated keys come from the attestation mechanism.
	k := decodeAs[store.Attestation](t, env.request(http.MethodPost, "/enrollments/dev-a/attestationmechanism", nil, nil)).SymmetricKey
	for _, key := range []string{k.PrimaryKey, k.SecondaryKey} {
		raw, err := base64.StdEncoding.DecodeString(key)
		if err != nil || len(raw) != 32 {
			t.Fatalf("generated key %q: %d bytes, %v", key, len(raw), err)
		}
	}
	if k.PrimaryKey == k.SecondaryKey {
		t.Fatal("primary and secondary keys are equal")
	}
	// GET (any case) returns the record without its keys, as DPS does.
	got := decodeAs[store.Enrollment](t, env.request(http.MethodGet, "/enrollments/DEV-a", nil, nil))
	if got.RegistrationID != "dev-a" || got.Attestation.SymmetricKey.PrimaryKey != "" || got.ETag != e.ETag {
		t.Fatalf("GET %+v", got)
	}
	// Replacing without keys keeps them; a stale etag is refused.
	body := symEnrollment("dev-a")
	body["iotHubHostName"] = "hub1.example.net"
	body["provisioningStatus"] = "disabled"
	env.request(http.MethodPut, "/enrollments/dev-a", body, map[string]string{"If-Match": `"stale"`}).
		expectError(t, 412, codePreconditionFailed)
	for _, form := range []string{"quoted", "bare", "star"} {
		m := map[string]string{"quoted": `"` + e.ETag + `"`, "bare": e.ETag, "star": "*"}[form]
		r := env.request(http.MethodPut, "/enrollments/dev-a", body, map[string]string{"If-Match": m})
		u := decodeAs[store.Enrollment](t, r)
		kept := decodeAs[store.Attestation](t, env.request(http.MethodPost, "/enrollments/dev-a/attestationmechanism", nil, nil))
		if *kept.SymmetricKey != *k || u.IoTHubHostName != "hub1.example.net" ||
			u.ProvisioningStatus != store.StatusDisabled || u.ETag == e.ETag {
			t.Fatalf("update with If-Match %s: %+v", m, u)
		}
		e = u
	}
	// The change is in the store for the provisioning service's next request.
	se, err := env.st.GetEnrollment(t.Context(), "dev-a")
	if err != nil || se.ProvisioningStatus != store.StatusDisabled || se.ETag != e.ETag {
		t.Fatalf("store has %+v, %v", se, err)
	}
	// If-Match on a missing record, delete with a stale etag, delete, 404s.
	env.request(http.MethodPut, "/enrollments/nobody", symEnrollment("nobody"), map[string]string{"If-Match": "abc"}).
		expectError(t, 412, codePreconditionFailed)
	env.request(http.MethodDelete, "/enrollments/dev-a", nil, map[string]string{"If-Match": "stale"}).
		expectError(t, 412, codePreconditionFailed)
	if r := env.request(http.MethodDelete, "/enrollments/dev-a", nil, map[string]string{"If-Match": `"` + e.ETag + `"`}); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	env.request(http.MethodGet, "/enrollments/dev-a", nil, nil).expectError(t, 404, codeEnrollmentNotFound)
	env.request(http.MethodDelete, "/enrollments/dev-a", nil, nil).expectError(t, 404, codeEnrollmentNotFound)

	// Audit: who, what, no secrets.
	logs := env.logs.String()
	for _, want := range []string{`"who":"provisioningserviceowner"`, `"action":"create"`, `"action":"update"`, `"action":"delete"`, `"id":"dev-a"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("audit log lacks %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, k.PrimaryKey) || strings.Contains(logs, k.SecondaryKey) {
		t.Fatal("a symmetric key was logged")
	}
}

func TestEnrollmentRegistrationState(t *testing.T) {
	env := newTestEnv(t)
	decodeAs[store.Enrollment](t, env.request(http.MethodPut, "/enrollments/dev-r", symEnrollment("dev-r"), nil))
	reg := &store.Registration{RegistrationID: "dev-r", Status: store.RegistrationAssigned, AssignedHub: "hub.example.net",
		DeviceID: "dev-r", HubKey: []byte("secret-hub-key-000000000000000000")}
	op := &store.Operation{ID: "op-1", RegistrationID: "dev-r", Status: store.RegistrationAssigned}
	op.CreatedAt = time.Now()
	op.ExpiresAt = op.CreatedAt.Add(time.Hour)
	if _, err := env.st.RecordRegistration(t.Context(), reg, op); err != nil {
		t.Fatal(err)
	}
	out := decodeAs[struct {
		RegistrationID    string              `json:"registrationId"`
		RegistrationState *store.Registration `json:"registrationState"`
	}](t, env.request(http.MethodGet, "/enrollments/dev-r", nil, nil))
	if out.RegistrationState == nil || out.RegistrationState.AssignedHub != "hub.example.net" {
		t.Fatalf("registrationState missing: %+v", out)
	}
	// A client sending back what it got (times, registrationState) is accepted.
	r := env.request(http.MethodGet, "/enrollments/dev-r", nil, nil)
	var round map[string]any
	if err := json.Unmarshal(r.body, &round); err != nil {
		t.Fatal(err)
	}
	round["createdDateTimeUtc"] = ""
	decodeAs[store.Enrollment](t, env.request(http.MethodPut, "/enrollments/dev-r", round, nil))
}

func TestEnrollmentTPMAndX509(t *testing.T) {
	env := newTestEnv(t)
	ek := testEK(t)
	body := map[string]any{"registrationId": "tpm-1", "attestation": map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": ek}}}
	e := decodeAs[store.Enrollment](t, env.request(http.MethodPut, "/enrollments/tpm-1", body, nil))
	if e.Attestation.TPM == nil || e.Attestation.TPM.EndorsementKey != ek {
		t.Fatalf("tpm enrollment %+v", e.Attestation)
	}
	pemText, der := testCert(t, "x509-1")
	body = map[string]any{"registrationId": "x509-1", "attestation": map[string]any{"type": "x509",
		"x509": map[string]any{"clientCertificates": map[string]any{"primary": map[string]any{"certificate": pemText}}}}}
	e = decodeAs[store.Enrollment](t, env.request(http.MethodPut, "/enrollments/x509-1", body, nil))
	info := e.Attestation.X509.ClientCertificates.Primary.Info
	sum := sha256.Sum256(der)
	if info == nil || info.SHA256Thumbprint != strings.ToUpper(hex.EncodeToString(sum[:])) ||
		info.SubjectName != "CN=x509-1" || info.SerialNumber != "1234ABCD" || info.Version != 3 {
		t.Fatalf("certificate info %+v", info)
	}
	// base64 DER is accepted too.
	body["registrationId"] = "x509-2"
	body["attestation"].(map[string]any)["x509"].(map[string]any)["clientCertificates"] =
		map[string]any{"primary": map[string]any{"certificate": base64.StdEncoding.EncodeToString(der)}}
	decodeAs[store.Enrollment](t, env.request(http.MethodPut, "/enrollments/x509-2", body, nil))
}

func TestEnrollmentValidation(t *testing.T) {
	env := newTestEnv(t)
	ek := testEK(t)
	short := base64.StdEncoding.EncodeToString(make([]byte, 8))
	deep := strings.Repeat(`{"a":`, 40) + "1" + strings.Repeat("}", 40)
	cases := []struct {
		name, path, body string
		status, code     int
	}{
		{"malformed JSON", "dev-1", `{"registrationId":`, 400, codeMalformedJSON},
		{"no attestation type", "dev-1", `{"attestation":{}}`, 400, codeInvalidArgument},
		{"unknown type", "dev-1", `{"attestation":{"type":"password"}}`, 400, codeInvalidArgument},
		{"id mismatch", "dev-1", `{"registrationId":"dev-2","attestation":{"type":"symmetricKey"}}`, 400, codeInvalidArgument},
		{"bad id in path", "-dev", `{"attestation":{"type":"symmetricKey"}}`, 400, codeInvalidArgument},
		{"id with space", "dev%20x", `{"attestation":{"type":"symmetricKey"}}`, 400, codeInvalidArgument},
		{"short key", "dev-1", `{"attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"` + short + `"}}}`, 400, codeInvalidArgument},
		{"key not base64", "dev-1", `{"attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"!!"}}}`, 400, codeInvalidArgument},
		{"tpm without EK", "dev-1", `{"attestation":{"type":"tpm","tpm":{}}}`, 400, codeInvalidArgument},
		{"EK not base64", "dev-1", `{"attestation":{"type":"tpm","tpm":{"endorsementKey":"%%%"}}}`, 400, codeInvalidArgument},
		{"EK not a key", "dev-1", `{"attestation":{"type":"tpm","tpm":{"endorsementKey":"AAQBAgME"}}}`, 400, codeInvalidArgument},
		{"tpm with symmetric key", "dev-1", `{"attestation":{"type":"tpm","tpm":{"endorsementKey":"` + ek + `"},"symmetricKey":{}}}`, 400, codeInvalidArgument},
		{"x509 without certificate", "dev-1", `{"attestation":{"type":"x509","x509":{"clientCertificates":{}}}}`, 400, codeInvalidArgument},
		{"x509 garbage certificate", "dev-1", `{"attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"certificate":"AAAA"}}}}}`, 400, codeInvalidArgument},
		{"bad status", "dev-1", `{"attestation":{"type":"symmetricKey"},"provisioningStatus":"paused"}`, 400, codeInvalidArgument},
		{"bad hub", "dev-1", `{"attestation":{"type":"symmetricKey"},"iotHubHostName":"a b"}`, 400, codeInvalidArgument},
		{"bad device id", "dev-1", `{"attestation":{"type":"symmetricKey"},"deviceId":"a/b"}`, 400, codeInvalidArgument},
		{"twin not an object", "dev-1", `{"attestation":{"type":"symmetricKey"},"initialTwin":[1]}`, 400, codeInvalidArgument},
		{"too deep", "dev-1", `{"attestation":{"type":"symmetricKey"},"initialTwin":` + deep + `}`, 400, codeMalformedJSON},
		{"too large", "dev-1", `{"attestation":{"type":"symmetricKey"},"deviceId":"` + strings.Repeat("a", DefaultMaxBodyBytes) + `"}`, 413, codeTooLarge},
		{"credential policy with a space", "dev-1", `{"attestation":{"type":"symmetricKey"},"credentialPolicyName":"a b"}`, 400, codeInvalidArgument},
		{"credential policy too long", "dev-1", `{"attestation":{"type":"symmetricKey"},"credentialPolicyName":"` + strings.Repeat("p", 65) + `"}`, 400, codeInvalidArgument},
		{"certificate policy alone", "dev-1", `{"attestation":{"type":"symmetricKey"},"dpsdCertificatePolicy":{"validityDays":7}}`, 400, codeInvalidArgument},
		{"validity 0.5 days", "dev-1", `{"attestation":{"type":"symmetricKey"},"credentialPolicyName":"p","dpsdCertificatePolicy":{"validityDays":0.5}}`, 400, codeMalformedJSON},
		{"validity 399 days", "dev-1", `{"attestation":{"type":"symmetricKey"},"credentialPolicyName":"p","dpsdCertificatePolicy":{"validityDays":399}}`, 400, codeInvalidArgument},
		{"validity negative", "dev-1", `{"attestation":{"type":"symmetricKey"},"credentialPolicyName":"p","dpsdCertificatePolicy":{"validityDays":-1}}`, 400, codeInvalidArgument},
		{"organization too long", "dev-1", `{"attestation":{"type":"symmetricKey"},"credentialPolicyName":"p","dpsdCertificatePolicy":{"organization":"` + strings.Repeat("o", 65) + `"}}`, 400, codeInvalidArgument},
		{"organization with a control character", "dev-1", `{"attestation":{"type":"symmetricKey"},"credentialPolicyName":"p","dpsdCertificatePolicy":{"organizationalUnit":"a\nb"}}`, 400, codeInvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env.request(http.MethodPut, "/enrollments/"+tc.path, tc.body, nil).expectError(t, tc.status, tc.code)
		})
	}
	n, err := env.st.CountEnrollments(t.Context())
	if err != nil || n != 0 {
		t.Fatalf("invalid requests stored %d enrollments (%v)", n, err)
	}
}

// bulkCreate creates n symmetric key enrollments dev-00000.. through the bulk API.
func bulkCreate(t *testing.T, env *testEnv, n int) {
	t.Helper()
	for start := 0; start < n; start += 1000 {
		var items []map[string]any
		for i := start; i < min(start+1000, n); i++ {
			items = append(items, symEnrollment(fmt.Sprintf("dev-%05d", i)))
		}
		res := decodeAs[wire.BulkResult](t, env.request(http.MethodPost, "/enrollments", map[string]any{"mode": "create", "enrollments": items}, nil))
		if !res.IsSuccessful || len(res.Errors) != 0 {
			t.Fatalf("bulk create: %+v", res.Errors[:min(3, len(res.Errors))])
		}
	}
}

func TestEnrollmentQueryPaging(t *testing.T) {
	env := newTestEnv(t)
	const n = 2500
	bulkCreate(t, env, n)
	seen := make(map[string]int)
	cont, pages := "", 0
	for {
		hdr := map[string]string{"x-ms-max-item-count": "300"}
		if cont != "" {
			hdr["x-ms-continuation"] = cont
		}
		r := env.request(http.MethodPost, "/enrollments/query", `{"query":"*"}`, hdr)
		page := decodeAs[[]store.Enrollment](t, r)
		if len(page) > 300 {
			t.Fatalf("page of %d items", len(page))
		}
		for _, e := range page {
			seen[e.RegistrationID]++
		}
		pages++
		cont = r.header.Get("x-ms-continuation")
		if cont == "" {
			break
		}
		if pages > n {
			t.Fatal("paging does not end")
		}
	}
	if len(seen) != n {
		t.Fatalf("saw %d distinct enrollments, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("%s seen %d times", id, c)
		}
	}
	if pages != (n+299)/300 {
		t.Fatalf("%d pages", pages)
	}
	env.request(http.MethodPost, "/enrollments/query", `{"query":"*"}`, map[string]string{"x-ms-continuation": "bogus"}).
		expectError(t, 400, codeBadQuery)
	env.request(http.MethodPost, "/enrollments/query", `{"query":"*"}`, map[string]string{"x-ms-max-item-count": "-1"}).
		expectError(t, 400, codeInvalidArgument)
	env.request(http.MethodPost, "/enrollments/query", `{"query":"SELECT * FROM enrollments WHERE x = 1"}`, nil).
		expectError(t, 400, codeBadQuery)
	// Default page size without the header, and an empty body is "*".
	page := decodeAs[[]store.Enrollment](t, env.request(http.MethodPost, "/enrollments/query", "", nil))
	if len(page) == 0 || len(page) > MaxPageItems {
		t.Fatalf("default page of %d", len(page))
	}
}

func TestBulkPartialFailure(t *testing.T) {
	env := newTestEnv(t)
	short := base64.StdEncoding.EncodeToString(make([]byte, 8))
	items := []any{
		symEnrollment("ok-1"),
		symEnrollment("bad id"),
		map[string]any{"registrationId": "bad-key", "attestation": map[string]any{"type": "symmetricKey", "symmetricKey": map[string]any{"primaryKey": short}}},
		symEnrollment("ok-2"),
		symEnrollment("OK-1"), // duplicate of ok-1
		map[string]any{"registrationId": 5},
	}
	res := decodeAs[wire.BulkResult](t, env.request(http.MethodPost, "/enrollments", map[string]any{"mode": "create", "enrollments": items}, nil))
	if res.IsSuccessful || len(res.Errors) != 4 {
		t.Fatalf("result %+v", res)
	}
	want := map[string]int{"bad id": 400, "bad-key": 400, "OK-1": 400, "": 400}
	for _, be := range res.Errors {
		if st, ok := want[be.RegistrationID]; !ok || be.ErrorCode/1000 != st || be.ErrorStatus == "" {
			t.Fatalf("unexpected error %+v", be)
		}
	}
	for _, id := range []string{"ok-1", "ok-2"} {
		decodeAs[store.Enrollment](t, env.request(http.MethodGet, "/enrollments/"+id, nil, nil))
	}
	// create on an existing id is a per-item conflict.
	res = decodeAs[wire.BulkResult](t, env.request(http.MethodPost, "/enrollments", map[string]any{"mode": "create",
		"enrollments": []any{symEnrollment("ok-1"), symEnrollment("ok-3")}}, nil))
	if res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].RegistrationID != "ok-1" || res.Errors[0].ErrorCode != codeConflict {
		t.Fatalf("conflict result %+v", res)
	}
	// updateIfMatchETag with a stale etag fails that item only.
	cur, err := env.st.GetEnrollment(t.Context(), "ok-2")
	if err != nil {
		t.Fatal(err)
	}
	stale := symEnrollment("ok-1")
	stale["etag"] = "stale"
	fresh := symEnrollment("ok-2")
	fresh["etag"] = cur.ETag
	fresh["provisioningStatus"] = "disabled"
	res = decodeAs[wire.BulkResult](t, env.request(http.MethodPost, "/enrollments", map[string]any{"mode": "updateIfMatchETag",
		"enrollments": []any{stale, fresh}}, nil))
	if len(res.Errors) != 1 || res.Errors[0].RegistrationID != "ok-1" || res.Errors[0].ErrorCode != codePreconditionFailed {
		t.Fatalf("updateIfMatchETag result %+v", res)
	}
	if got, err := env.st.GetEnrollment(t.Context(), "ok-2"); err != nil || got.ProvisioningStatus != "disabled" ||
		got.Attestation.SymmetricKey.PrimaryKey != cur.Attestation.SymmetricKey.PrimaryKey {
		t.Fatalf("ok-2 after update: %+v", got)
	}
	// delete: a missing item fails, the rest are deleted.
	res = decodeAs[wire.BulkResult](t, env.request(http.MethodPost, "/enrollments", map[string]any{"mode": "delete",
		"enrollments": []any{map[string]any{"registrationId": "ok-1"}, map[string]any{"registrationId": "missing"}}}, nil))
	if len(res.Errors) != 1 || res.Errors[0].RegistrationID != "missing" || res.Errors[0].ErrorCode != codeEnrollmentNotFound {
		t.Fatalf("delete result %+v", res)
	}
	env.request(http.MethodGet, "/enrollments/ok-1", nil, nil).expectError(t, 404, codeEnrollmentNotFound)
	// Whole-request errors.
	env.request(http.MethodPost, "/enrollments", `{"mode":"upsert","enrollments":[{}]}`, nil).expectError(t, 400, codeInvalidArgument)
	env.request(http.MethodPost, "/enrollments", `{"mode":"create","enrollments":[]}`, nil).expectError(t, 400, codeInvalidArgument)
	env.request(http.MethodPost, "/enrollments", `{"mode":"create","enrollments":[`+strings.Repeat(`{},`, MaxBulkItems)+`{}]}`, nil).
		expectError(t, 400, codeTooManyItems)
	ok := decodeAs[wire.BulkResult](t, env.request(http.MethodPost, "/enrollments", map[string]any{"mode": "update", "enrollments": []any{symEnrollment("ok-9")}}, nil))
	if !ok.IsSuccessful || ok.Errors == nil {
		t.Fatalf("successful bulk result %+v (errors must be [] not null)", ok)
	}
}

// TestEnrollmentIssuanceSettings: credentialPolicyName and
// dpsdCertificatePolicy round-trip through the API, for enrollments and
// groups; an empty policy object is dropped; validityDays 1 and 398 are
// the bounds.
func TestEnrollmentIssuanceSettings(t *testing.T) {
	env := newTestEnv(t)
	body := `{"attestation":{"type":"symmetricKey"},"credentialPolicyName":"line-3.certs","dpsdCertificatePolicy":{"validityDays":398,"organization":"Fabrik Süd","organizationalUnit":"Line 3"}}`
	got := decodeAs[map[string]any](t, env.request(http.MethodPut, "/enrollments/dev-iss", body, nil))
	pol, _ := got["dpsdCertificatePolicy"].(map[string]any)
	if got["credentialPolicyName"] != "line-3.certs" || pol["validityDays"] != float64(398) || pol["organization"] != "Fabrik Süd" || pol["organizationalUnit"] != "Line 3" {
		t.Fatalf("answer %v", got)
	}
	e, err := env.st.GetEnrollment(t.Context(), "dev-iss")
	if err != nil || e.CredentialPolicyName != "line-3.certs" || e.CertificatePolicy == nil || e.CertificatePolicy.ValidityDays != 398 {
		t.Fatalf("stored %+v, %v", e, err)
	}
	got = decodeAs[map[string]any](t, env.request(http.MethodPut, "/enrollmentGroups/grp-iss", `{"attestation":{"type":"symmetricKey"},"credentialPolicyName":"p","dpsdCertificatePolicy":{"validityDays":1}}`, nil))
	if got["credentialPolicyName"] != "p" || got["dpsdCertificatePolicy"].(map[string]any)["validityDays"] != float64(1) {
		t.Fatalf("group answer %v", got)
	}
	got = decodeAs[map[string]any](t, env.request(http.MethodPut, "/enrollments/dev-empty", `{"attestation":{"type":"symmetricKey"},"dpsdCertificatePolicy":{}}`, nil))
	if _, ok := got["dpsdCertificatePolicy"]; ok {
		t.Fatalf("an empty policy was kept: %v", got)
	}
}
