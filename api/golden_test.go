package api

import (
	"bytes"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/tpmdps/dpsd/store/storetest"
)

var update = flag.Bool("update", false, "rewrite the golden answers in testdata/golden")

// volatile matches what changes from run to run in an answer: etags,
// timestamps and tracking ids.
var volatile = regexp.MustCompile(`"(etag|createdDateTimeUtc|lastUpdatedDateTimeUtc|trackingId|timestampUtc)":"[^"]*"`)

// TestAnswersUnchanged: the API's answers for records of every kind and
// field (one read, a query page, a group, a registration) are byte for
// byte what they were when the golden files were written, apart from
// etags and times.
func TestAnswersUnchanged(t *testing.T) {
	env := newTestEnv(t)
	ctx := t.Context()
	if _, err := env.st.PutEnrollment(ctx, storetest.FullEnrollment("Golden-E"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := env.st.PutGroup(ctx, storetest.FullGroup("Golden-G"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := env.st.RecordRegistration(ctx, storetest.FullRegistration("Golden-E", "Golden-G"), nil); err != nil {
		t.Fatal(err)
	}
	for name, req := range map[string]struct{ method, path string }{
		"enrollment.json":          {http.MethodGet, "/enrollments/golden-e"},
		"enrollments-query.json":   {http.MethodPost, "/enrollments/query"},
		"group.json":               {http.MethodGet, "/enrollmentGroups/GOLDEN-G"},
		"groups-query.json":        {http.MethodPost, "/enrollmentGroups/query"},
		"registration.json":        {http.MethodGet, "/registrations/golden-e"},
		"group-registrations.json": {http.MethodPost, "/registrations/golden-g/query"},
	} {
		var body any
		if req.method == http.MethodPost {
			body = `{"query":"*"}`
		}
		r := env.request(req.method, req.path, body, nil)
		if r.status != http.StatusOK {
			t.Fatalf("%s %s: %d %s", req.method, req.path, r.status, r.body)
		}
		got := volatile.ReplaceAll(r.body, []byte(`"$1":"-"`))
		path := filepath.Join("testdata", "golden", name)
		if *update {
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s %s changed:\n got %s\nwant %s", req.method, req.path, got, want)
		}
	}
}
