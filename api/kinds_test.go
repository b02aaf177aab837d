package api

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/api/wire"
)

// TestBulkModesOfBothKinds runs every bulk mode on individual enrollments
// and on enrollment groups, which share one bulk path: per-item failures
// name the item by the kind's id field, the rest is written, and every
// write leaves an audit line of its kind.
func TestBulkModesOfBothKinds(t *testing.T) {
	for _, c := range []struct {
		path, key, idField, kind string
	}{
		{"/enrollments", "enrollments", "registrationId", "enrollment"},
		{"/enrollmentGroups", "enrollmentGroups", "enrollmentGroupId", "enrollmentGroup"},
	} {
		t.Run(c.kind, func(t *testing.T) {
			env := newTestEnv(t)
			item := func(id, etag string) map[string]any {
				m := map[string]any{c.idField: id, "attestation": map[string]any{"type": "symmetricKey"}}
				if etag != "" {
					m["etag"] = etag
				}
				return m
			}
			bulk := func(mode string, items ...any) wire.BulkResult {
				t.Helper()
				return decodeAs[wire.BulkResult](t, env.request(http.MethodPost, c.path, map[string]any{"mode": mode, c.key: items}, nil))
			}
			failed := func(res wire.BulkResult) map[string]int {
				t.Helper()
				out := map[string]int{}
				for _, e := range res.Errors {
					id := e.RegistrationID
					if c.idField == "enrollmentGroupId" {
						id = e.EnrollmentGroupID
						if e.RegistrationID != "" {
							t.Fatalf("a group's error names a registrationId: %+v", e)
						}
					} else if e.EnrollmentGroupID != "" {
						t.Fatalf("an enrollment's error names an enrollmentGroupId: %+v", e)
					}
					out[id] = e.ErrorCode
				}
				return out
			}
			etagOf := func(id string) string {
				t.Helper()
				var v map[string]any
				r := env.request(http.MethodGet, c.path+"/"+id, nil, nil)
				v = decodeAs[map[string]any](t, r)
				return fmt.Sprint(v["etag"])
			}
			res := bulk("create", item("a", ""), item("b", ""), item("B", ""), map[string]any{"attestation": map[string]any{"type": "symmetricKey"}})
			if f := failed(res); res.IsSuccessful || len(f) != 2 || f["B"] != codeInvalidArgument || f[""] != codeInvalidArgument {
				t.Fatalf("create: %+v", res)
			}
			res = bulk("create", item("a", ""), item("c", ""))
			if f := failed(res); len(f) != 1 || f["a"] != codeConflict {
				t.Fatalf("create of an existing id: %+v", res)
			}
			etagA := etagOf("a")
			res = bulk("update", item("a", ""), item("d", ""))
			if !res.IsSuccessful || etagOf("a") == etagA {
				t.Fatalf("update: %+v", res)
			}
			res = bulk("updateIfMatchETag", item("a", etagA), item("b", etagOf("b")))
			if f := failed(res); len(f) != 1 || f["a"] != codePreconditionFailed {
				t.Fatalf("updateIfMatchETag: %+v", res)
			}
			res = bulk("delete", item("a", etagA), item("b", ""), item("zz", ""))
			if f := failed(res); len(f) != 2 || f["a"] != codePreconditionFailed || f["zz"]/1000 != 404 {
				t.Fatalf("delete: %+v", res)
			}
			env.request(http.MethodGet, c.path+"/b", nil, nil).expectError(t, 404, 0)
			for _, id := range []string{"a", "c", "d"} {
				if r := env.request(http.MethodGet, c.path+"/"+id, nil, nil); r.status != 200 {
					t.Fatalf("%s: %d %s", id, r.status, r.body)
				}
			}
			logs := env.logs.String()
			for _, action := range []string{"create", "update", "delete"} {
				if !strings.Contains(logs, `"action":"`+action+`","kind":"`+c.kind+`"`) {
					t.Errorf("no %s audit line of kind %s", action, c.kind)
				}
			}
		})
	}
}
