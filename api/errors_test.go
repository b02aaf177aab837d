package api

import (
	"net/http"
	"regexp"
	"testing"
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
