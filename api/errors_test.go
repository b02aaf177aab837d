package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/api/wire"
)

// uuidV4 is the canonical form of an RFC 4122 version 4 UUID, the form of
// the DPS cloud service's trackingIds.
var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestTrackingIDIsUUID: an error body's trackingId is a version 4 UUID and
// the x-ms-request-id header of the same answer.
func TestTrackingIDIsUUID(t *testing.T) {
	env := newTestEnv(t)
	r := env.request(http.MethodGet, "/enrollments/dev-1", nil, map[string]string{"Authorization": "-"})
	r.expectError(t, 401, codeUnauthorized)
	id := r.errorBody(t).TrackingID
	if !uuidV4.MatchString(id) {
		t.Fatalf("trackingId %q is not a version 4 UUID", id)
	}
	if h := r.header.Get("x-ms-request-id"); h != id {
		t.Fatalf("x-ms-request-id %q, body trackingId %q", h, id)
	}
}

// goWords are fragments of Go's own error texts that must never reach an
// answer: type and field names of the implementation, package prefixes.
var goWords = []string{"Go struct", "Go value", "enrollmentIn", "groupIn", "store.", "api.", "json:", "attest:",
	"reflect", "[]", "*", "map[", "Time.", "UnmarshalJSON", "RawMessage", "Enrollment.", "Group."}

// checkOwnWords fails the test when msg holds a Go word.
func checkOwnWords(t *testing.T, msg string) {
	t.Helper()
	for _, w := range goWords {
		if strings.Contains(msg, w) {
			t.Errorf("message %q contains %q", msg, w)
		}
	}
}

// TestErrorMessagesInOwnWords: bodies that do not decode get a DPS error
// naming the JSON field path and the expected JSON type (or the byte offset
// of a syntax error), never Go types; nothing is stored.
func TestErrorMessagesInOwnWords(t *testing.T) {
	env := newTestEnv(t)
	pemText, _ := testCert(t, "cam")
	cases := []struct {
		name, path, body string
		want             []string // fragments the message must contain
	}{
		{"id is a number", "/enrollments/dev-1", `{"registrationId":5,"attestation":{"type":"symmetricKey"}}`,
			[]string{"registrationId: expected a string, found a number (at byte 19)"}},
		{"type is an object", "/enrollments/dev-1", `{"attestation":{"type":{}}}`, []string{"attestation.type: expected a string, found an object"}},
		{"hubs not an array", "/enrollments/dev-1", `{"attestation":{"type":"symmetricKey"},"iotHubs":"hub"}`, []string{"iotHubs: expected an array, found a string"}},
		{"hub entry a number", "/enrollments/dev-1", `{"attestation":{"type":"symmetricKey"},"iotHubs":[1]}`, []string{"iotHubs: expected a string, found a number"}},
		{"edge not a boolean", "/enrollments/dev-1", `{"attestation":{"type":"symmetricKey"},"capabilities":{"iotEdge":"yes"}}`,
			[]string{"capabilities.iotEdge: expected true or false, found a string"}},
		{"info version a fraction", "/enrollments/dev-1", `{"attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"certificate":` +
			jsonString(pemText) + `,"info":{"version":1.5}}}}}}`, []string{"attestation.x509.clientCertificates.primary.info.version: expected an integer in range, found the number 1.5"}},
		{"a date that is no date", "/enrollments/dev-1", `{"attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"info":{"notAfterUtc":"soon"}}}}}}`,
			[]string{"RFC 3339"}},
		{"a date that is a number", "/enrollments/dev-1", `{"attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"info":{"notAfterUtc":5}}}}}}`,
			[]string{"RFC 3339"}},
		{"body an array", "/enrollments/dev-1", `[1,2]`, []string{"expected an object, found an array"}},
		{"truncated", "/enrollments/dev-1", `{"registrationId":"dev-1"`, []string{"unexpected end of JSON input"}},
		{"syntax", "/enrollments/dev-1", `{"registrationId":"dev-1",}`, []string{"invalid character", "(at byte 27)"}},
		{"group status a number", "/enrollmentGroups/g-1", `{"attestation":{"type":"symmetricKey"},"provisioningStatus":1}`,
			[]string{"malformed enrollment group JSON", "provisioningStatus: expected a string, found a number"}},
		{"bulk mode object", "/enrollments", `{"mode":"create","enrollments":{}}`, []string{"enrollments must be an array"}},
		{"bulk not JSON", "/enrollments", `{"mode":`, []string{"malformed bulk operation JSON", "unexpected end of JSON input"}},
		{"query spec a number", "/enrollments/query", `{"query":5}`, []string{"malformed query specification JSON", "query: expected a string, found a number"}},
		{"bad id", "/enrollments/dev%20x", `{"attestation":{"type":"symmetricKey"}}`, []string{"id in path: invalid registration id"}},
		{"bad EK", "/enrollments/dev-1", `{"attestation":{"type":"tpm","tpm":{"endorsementKey":"AAQBAgME"}}}`, []string{"endorsementKey is not a valid TPM2B_PUBLIC"}},
		{"bad certificate", "/enrollments/dev-1", `{"attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"certificate":"AAAA"}}}}}`,
			[]string{"attestation.x509.clientCertificates.primary.certificate: bad certificate"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method := http.MethodPut
			if strings.HasSuffix(tc.path, "/query") || tc.path == "/enrollments" {
				method = http.MethodPost
			}
			r := env.request(method, tc.path, tc.body, nil)
			r.expectError(t, 400, 0)
			msg := r.errorBody(t).Message
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
			checkOwnWords(t, msg)
		})
	}
	if n, err := env.st.CountEnrollments(t.Context()); err != nil || n != 0 {
		t.Fatalf("refused bodies stored %d enrollments (%v)", n, err)
	}
}

// jsonString quotes s as a JSON string.
func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestMalformedQueryString: a malformed percent-escape in the query string
// (which net/http lets through and url.Values would drop) is a 400 in the
// DPS shape, on the API and on /backup.
func TestMalformedQueryString(t *testing.T) {
	env := newTestEnv(t)
	for _, q := range []string{"?api-version=2021-10-01&x=%zz", "?api-version=%zz", "?api-version=2021-10-01&%", "?api-version=2021-10-01;x=1"} {
		r := env.request(http.MethodGet, "/enrollments/dev-1"+q, nil, nil)
		r.expectError(t, 400, codeBadRequest)
		if msg := r.errorBody(t).Message; !strings.Contains(msg, "malformed query string") {
			t.Errorf("%s: message %q", q, msg)
		}
	}
	benv, _ := backupEnv(t)
	res, body := getBackup(t, benv, benv.ownerToken(), "?api-version=2021-10-01&x=%zz")
	var eb wire.Error
	if res.StatusCode != 400 || json.Unmarshal(body, &eb) != nil || eb.ErrorCode != codeBadRequest {
		t.Fatalf("backup with a malformed query: %d %s", res.StatusCode, body)
	}
}

// FuzzDecodeErrorWords: whatever bytes arrive as an enrollment or group
// body, a refusal is a 400 whose message holds no Go type or field name.
func FuzzDecodeErrorWords(f *testing.F) {
	for _, s := range []string{`{"registrationId":5}`, `{"attestation":{"type":[]}}`, `[`, `{"iotHubs":{"a":1}}`,
		`{"attestation":{"x509":{"signingCertificates":{"primary":{"info":{"notBeforeUtc":"x","version":"1"}}}}}}`,
		`{"capabilities":{"iotEdge":1}}`, `{"reprovisionPolicy":[]}`, `"x"`, `{"initialTwin":5}`, `{"etag":false}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, eerr := DecodeEnrollment(data)
		_, gerr := DecodeGroup(data)
		for _, err := range []error{eerr, gerr} {
			if err == nil {
				continue
			}
			var ae *apiError
			if !errors.As(err, &ae) || ae.status() != 400 {
				t.Fatalf("refusal %v is not a 400 apiError", err)
			}
			for _, w := range goWords {
				if strings.Contains(ae.msg, w) && !bytes.Contains(data, []byte(w)) {
					t.Fatalf("message %q contains %q", ae.msg, w)
				}
			}
		}
	})
}
