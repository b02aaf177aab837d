package api

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// TestSymmetricKeyStrictBase64: a symmetric key the devices' decoder would
// refuse (a line break, non-canonical trailing bits, unpadded) is a 400 that
// says why, for enrollments and groups alike, and nothing is stored: such a
// key could never authenticate a device.
func TestSymmetricKeyStrictBase64(t *testing.T) {
	env := newTestEnv(t)
	good := base64.StdEncoding.EncodeToString(randomBytes(t, 32)) // 43 characters and "="
	// The 43rd character carries 2 bits that must be zero; setting one keeps
	// the decoded bytes but makes the text non-canonical.
	last := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", good[42])
	nonCanonical := good[:42] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[last|1]) + "="
	if _, err := base64.StdEncoding.DecodeString(nonCanonical); err != nil {
		t.Fatalf("the lenient decoder should accept %q: %v", nonCanonical, err)
	}
	for name, key := range map[string]string{
		"CRLF inside":   good[:20] + "\r\n" + good[20:],
		"LF at the end": good + "\n",
		"non-canonical": nonCanonical,
		"unpadded":      strings.TrimRight(good, "="),
	} {
		for _, kind := range []string{"enrollments", "enrollmentGroups"} {
			t.Run(name+"/"+kind, func(t *testing.T) {
				body := map[string]any{"attestation": map[string]any{"type": "symmetricKey",
					"symmetricKey": map[string]any{"primaryKey": good, "secondaryKey": key}}}
				r := env.request(http.MethodPut, "/"+kind+"/dev-1", body, nil)
				r.expectError(t, 400, codeInvalidArgument)
				msg := r.errorBody(t).Message
				if !strings.Contains(msg, "secondaryKey") || !strings.Contains(msg, "base64") {
					t.Fatalf("message %q does not say which key and why", msg)
				}
				if strings.Contains(msg, good[:8]) {
					t.Fatalf("message %q repeats the key", msg)
				}
			})
		}
	}
	if n, err := env.st.CountEnrollments(t.Context()); err != nil || n != 0 {
		t.Fatalf("refused keys stored %d enrollments (%v)", n, err)
	}
	if p, err := env.st.ListGroups(t.Context(), store.Query{}); err != nil || len(p.Items) != 0 {
		t.Fatalf("refused keys stored groups: %v %v", p.Items, err)
	}
	// Whatever the API accepts, the device side's decoder accepts too.
	decodeAs[map[string]any](t, env.request(http.MethodPut, "/enrollments/dev-2", map[string]any{"attestation": map[string]any{
		"type": "symmetricKey", "symmetricKey": map[string]any{"primaryKey": good}}}, nil))
	e, err := env.st.GetEnrollment(t.Context(), "dev-2")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{e.Attestation.SymmetricKey.PrimaryKey, e.Attestation.SymmetricKey.SecondaryKey} {
		if _, err := attest.DecodeSymmetricKey(k); err != nil {
			t.Fatalf("stored key %q fails the device decoder: %v", k, err)
		}
	}
}
