package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/api/wire"
)

// tpmBody is the request body of a TPM enrollment of ek.
func tpmBody(id, ek string) map[string]any {
	return map[string]any{"registrationId": id, "attestation": map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": ek}}}
}

// TestSharedEKWarning: a write that enrolls an endorsement key already
// enrolled under another registration id succeeds as before, with a
// warning header naming both ids and a warn log line; other writes carry no
// warning. Bulk answers name every such item, bounded.
func TestSharedEKWarning(t *testing.T) {
	env := newTestEnv(t)
	x, y := testEK(t), testEK(t)
	put := func(id, ek string) result {
		t.Helper()
		r := env.request(http.MethodPut, "/enrollments/"+id, tpmBody(id, ek), nil)
		if r.status != http.StatusOK {
			t.Fatalf("PUT %s: %d %s", id, r.status, r.body)
		}
		return r
	}
	warnings := func(r result) []string { return r.header.Values(wire.WarningHeader) }
	if w := warnings(put("dev-a", x)); len(w) != 0 {
		t.Fatalf("first enrollment of a key warned: %q", w)
	}
	if w := warnings(put("dev-a", x)); len(w) != 0 {
		t.Fatalf("rewriting the same enrollment warned: %q", w)
	}
	r := put("Dev-B", x)
	w := warnings(r)
	if len(w) != 1 || !strings.Contains(w[0], "dev-b (also dev-a)") || !strings.Contains(w[0], "more than one registration id") {
		t.Fatalf("second id of a key: warnings %q", w)
	}
	var body map[string]any
	if err := json.Unmarshal(r.body, &body); err != nil || body["registrationId"] != "dev-b" {
		t.Fatalf("the answer is not the enrollment: %s", r.body)
	}
	logs := env.logs.String()
	if !strings.Contains(logs, `"level":"WARN"`) || !strings.Contains(logs, `"registrationId":"dev-b","alsoEnrolledAs":["dev-a"]`) {
		t.Fatalf("no warn line naming both ids:\n%s", logs)
	}
	if w := warnings(put("dev-c", y)); len(w) != 0 {
		t.Fatalf("another key warned: %q", w)
	}
	// A symmetric-key enrollment has no endorsement key.
	if r := env.request(http.MethodPut, "/enrollments/dev-s", symEnrollment("dev-s"), nil); r.status != 200 || len(warnings(r)) != 0 {
		t.Fatalf("symmetric key enrollment: %d %q", r.status, warnings(r))
	}
	// Bulk: the created items that share a key are named; the count and
	// the list are bounded.
	items := []any{tpmBody("dev-d", x), tpmBody("dev-e", y)}
	for i := range warnItems + 2 {
		items = append(items, tpmBody(fmt.Sprintf("bulk-%02d", i), y))
	}
	r = env.request(http.MethodPost, "/enrollments", map[string]any{"mode": "create", "enrollments": items}, nil)
	res := decodeAs[wire.BulkResult](t, r)
	w = warnings(r)
	if !res.IsSuccessful || len(w) != 1 {
		t.Fatalf("bulk: %+v, warnings %q", res, w)
	}
	if !strings.Contains(w[0], "dev-d (also dev-a, dev-b)") || !strings.Contains(w[0], "dev-e (also bulk-00, bulk-01, bulk-02, bulk-03, bulk-04 and 8 more)") ||
		!strings.HasSuffix(w[0], " and 4 more") {
		t.Fatalf("bulk warning %q", w[0])
	}
	// Deleting is never warned about.
	r = env.request(http.MethodPost, "/enrollments", map[string]any{"mode": "delete", "enrollments": []any{tpmBody("dev-d", x)}}, nil)
	if decodeAs[wire.BulkResult](t, r); len(warnings(r)) != 0 {
		t.Fatalf("bulk delete warned: %q", warnings(r))
	}
}
