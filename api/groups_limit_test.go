package api

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/store/bolt"
)

// newLimitEnv is newTestEnv on a store that allows at most maxGroups
// enrollment groups.
func newLimitEnv(t *testing.T, maxGroups int) *testEnv {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "dps.db"), bolt.Options{Timeout: 5 * time.Second, MaxGroups: maxGroups})
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	env := &testEnv{t: t, st: st, ownerKey: randomBytes(t, 32), readerKey: randomBytes(t, 32), logs: &testkit.LogBuffer{}}
	h, err := New(Config{
		Store:    st,
		HostName: testHost,
		Policies: []Policy{{Name: ownerName, Key: env.ownerKey, Rights: RightAll}},
		Logger:   slog.New(slog.NewJSONHandler(env.logs, nil)),
	})
	if err != nil {
		t.Fatalf("api.New: %v", err)
	}
	env.srv = httptest.NewTLSServer(h)
	t.Cleanup(env.srv.Close)
	return env
}

// TestGroupLimitRefused: beyond the store's group limit, creating a group
// is refused with 403 errorCode 403002 and a message naming the limit, by
// PUT and by bulk create alike, and nothing is stored; updates of existing
// groups and creates after a delete go on.
func TestGroupLimitRefused(t *testing.T) {
	env := newLimitEnv(t, 3)
	group := func(id string) map[string]any {
		return map[string]any{"enrollmentGroupId": id, "attestation": map[string]any{"type": "symmetricKey"}}
	}
	for i := range 3 {
		if r := env.request(http.MethodPut, fmt.Sprintf("/enrollmentGroups/g-%d", i), group(fmt.Sprintf("g-%d", i)), nil); r.status != 200 {
			t.Fatalf("group %d: %d %s", i, r.status, r.body)
		}
	}
	r := env.request(http.MethodPut, "/enrollmentGroups/g-3", group("g-3"), nil)
	r.expectError(t, http.StatusForbidden, codeQuotaExceeded)
	if msg := r.errorBody(t).Message; !strings.Contains(msg, "at most 3 enrollment groups") || !strings.Contains(msg, "max-groups") {
		t.Fatalf("message %q does not name the limit", msg)
	}
	env.request(http.MethodGet, "/enrollmentGroups/g-3", nil, nil).expectError(t, 404, codeGroupNotFound)
	// Updating an existing group at the limit works.
	if r := env.request(http.MethodPut, "/enrollmentGroups/g-0", map[string]any{"enrollmentGroupId": "g-0",
		"attestation": map[string]any{"type": "symmetricKey"}, "provisioningStatus": "disabled"}, nil); r.status != 200 {
		t.Fatalf("update at the limit: %d %s", r.status, r.body)
	}
	// Bulk: creates beyond the limit fail per item, updates go through.
	res := decodeAs[wire.BulkResult](t, env.request(http.MethodPost, "/enrollmentGroups", map[string]any{"mode": "update",
		"enrollmentGroups": []any{group("g-1"), group("g-4"), group("g-5")}}, nil))
	if res.IsSuccessful || len(res.Errors) != 2 {
		t.Fatalf("bulk: %+v", res)
	}
	for _, e := range res.Errors {
		if (e.EnrollmentGroupID != "g-4" && e.EnrollmentGroupID != "g-5") || e.ErrorCode != codeQuotaExceeded || !strings.Contains(e.ErrorStatus, "at most 3") {
			t.Fatalf("bulk error %+v", e)
		}
	}
	if n, err := env.st.CountGroups(t.Context()); err != nil || n != 3 {
		t.Fatalf("%d groups stored, %v", n, err)
	}
	// One deleted, one more can be created.
	if r := env.request(http.MethodDelete, "/enrollmentGroups/g-2", nil, nil); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if r := env.request(http.MethodPut, "/enrollmentGroups/g-3", group("g-3"), nil); r.status != 200 {
		t.Fatalf("create after a delete: %d %s", r.status, r.body)
	}
}
