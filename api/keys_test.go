package api

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// readerToken signs a valid token of the read-only policy.
func (e *testEnv) readerToken() string {
	return attest.SignSAS(e.readerKey, testHost, time.Now().Add(time.Hour), readerName)
}

// TestRecordsNeverCarryKeys: no answer that carries records (GET, query,
// PUT) holds a symmetric key, for the read-only policy or the owner; the
// attestation keeps its type and, for TPM, the EK. A reader holding a group
// key could derive the key of any device id and provision it.
func TestRecordsNeverCarryKeys(t *testing.T) {
	env := newTestEnv(t)
	ek := testEK(t)
	put := func(path string, body any) {
		t.Helper()
		if r := env.request(http.MethodPut, path, body, nil); r.status != http.StatusOK {
			t.Fatalf("PUT %s: %d %s", path, r.status, r.body)
		}
	}
	put("/enrollments/sym-1", symEnrollment("sym-1"))
	put("/enrollments/tpm-1", map[string]any{"registrationId": "tpm-1",
		"attestation": map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": ek}}})
	put("/enrollmentGroups/grp-1", map[string]any{"attestation": map[string]any{"type": "symmetricKey"}})
	se, err := env.st.GetEnrollment(t.Context(), "sym-1")
	if err != nil {
		t.Fatal(err)
	}
	sg, err := env.st.GetGroup(t.Context(), "grp-1")
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{se.Attestation.SymmetricKey.PrimaryKey, se.Attestation.SymmetricKey.SecondaryKey,
		sg.Attestation.SymmetricKey.PrimaryKey, sg.Attestation.SymmetricKey.SecondaryKey}

	for _, who := range []struct{ name, token string }{{"reader", env.readerToken()}, {"owner", env.ownerToken()}} {
		auth := map[string]string{"Authorization": who.token}
		for _, rq := range []struct{ method, path string }{
			{http.MethodGet, "/enrollments/sym-1"},
			{http.MethodGet, "/enrollmentGroups/grp-1"},
			{http.MethodPost, "/enrollments/query"},
			{http.MethodPost, "/enrollmentGroups/query"},
		} {
			var body any
			if rq.method == http.MethodPost {
				body = `{"query":"*"}`
			}
			r := env.request(rq.method, rq.path, body, auth)
			if r.status != http.StatusOK {
				t.Fatalf("%s: %s %s: %d %s", who.name, rq.method, rq.path, r.status, r.body)
			}
			for _, k := range secrets {
				if strings.Contains(string(r.body), k) {
					t.Errorf("%s: %s %s answers a symmetric key: %s", who.name, rq.method, rq.path, r.body)
				}
			}
			if strings.Contains(string(r.body), "primaryKey") || strings.Contains(string(r.body), "secondaryKey") {
				t.Errorf("%s: %s %s has a key field: %s", who.name, rq.method, rq.path, r.body)
			}
		}
		// The attestation keeps its type, and a TPM enrollment its (public) EK.
		got := decodeAs[store.Enrollment](t, env.request(http.MethodGet, "/enrollments/sym-1", nil, auth))
		if got.Attestation.Type != store.AttestationSymmetricKey {
			t.Errorf("%s: attestation %+v", who.name, got.Attestation)
		}
		tpm := decodeAs[store.Enrollment](t, env.request(http.MethodGet, "/enrollments/tpm-1", nil, auth))
		if tpm.Attestation.Type != store.AttestationTPM || tpm.Attestation.TPM == nil || tpm.Attestation.TPM.EndorsementKey != ek {
			t.Errorf("%s: TPM attestation %+v", who.name, tpm.Attestation)
		}
	}
	// The owner's PUT answer carries no key either, and a PUT of what a GET
	// returned (no keys) keeps the stored keys.
	got := env.request(http.MethodGet, "/enrollments/sym-1", nil, nil)
	r := env.request(http.MethodPut, "/enrollments/sym-1", got.body, nil)
	if r.status != http.StatusOK || strings.Contains(string(r.body), "primaryKey") {
		t.Fatalf("PUT answer: %d %s", r.status, r.body)
	}
	after, err := env.st.GetEnrollment(t.Context(), "sym-1")
	if err != nil || *after.Attestation.SymmetricKey != *se.Attestation.SymmetricKey {
		t.Fatalf("keys after a GET/PUT round trip: %+v %v", after.Attestation.SymmetricKey, err)
	}
}

// TestAttestationMechanism: POST .../attestationmechanism answers the
// attestation with its keys (the DPS "Get Attestation Mechanism"
// operation), and only to a policy with the write right.
func TestAttestationMechanism(t *testing.T) {
	env := newTestEnv(t)
	env.request(http.MethodPut, "/enrollments/sym-1", symEnrollment("sym-1"), nil)
	env.request(http.MethodPut, "/enrollmentGroups/grp-1", map[string]any{"attestation": map[string]any{"type": "symmetricKey"}}, nil)
	se, _ := env.st.GetEnrollment(t.Context(), "sym-1")
	sg, _ := env.st.GetGroup(t.Context(), "grp-1")
	reader := map[string]string{"Authorization": env.readerToken()}
	for _, tc := range []struct {
		path string
		want *store.SymmetricKeyAttestation
	}{
		{"/enrollments/SYM-1/attestationmechanism", se.Attestation.SymmetricKey},
		{"/enrollmentGroups/grp-1/attestationMechanism", sg.Attestation.SymmetricKey},
	} {
		r := env.request(http.MethodPost, tc.path, nil, reader)
		r.expectError(t, 403, codeForbidden)
		if strings.Contains(string(r.body), tc.want.PrimaryKey) {
			t.Fatalf("reader's 403 carries the key: %s", r.body)
		}
		a := decodeAs[store.Attestation](t, env.request(http.MethodPost, tc.path, nil, nil))
		if a.Type != store.AttestationSymmetricKey || a.SymmetricKey == nil || *a.SymmetricKey != *tc.want {
			t.Fatalf("%s: %+v, want keys %+v", tc.path, a, tc.want)
		}
		env.request(http.MethodGet, tc.path, nil, nil).expectError(t, 405, codeMethodNotAllowed)
	}
	env.request(http.MethodPost, "/enrollments/nobody/attestationmechanism", nil, nil).expectError(t, 404, codeEnrollmentNotFound)
	env.request(http.MethodPost, "/enrollmentGroups/nobody/attestationmechanism", nil, nil).expectError(t, 404, codeGroupNotFound)
	env.request(http.MethodPost, "/enrollments/sym-1/other", nil, nil).expectError(t, 404, codeNoRoute)
}
