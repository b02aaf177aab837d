package api

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// zeroReader is a deterministic key source for the fuzzer.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// FuzzEnrollmentJSON feeds untrusted bodies to the enrollment decoder and
// validator: no panic, and whatever is accepted survives a round trip.
func FuzzEnrollmentJSON(f *testing.F) {
	f.Add([]byte(`{"registrationId":"dev-1","attestation":{"type":"symmetricKey"}}`))
	f.Add([]byte(`{"attestation":{"type":"tpm","tpm":{"endorsementKey":"AAQBAgME"}}}`))
	f.Add([]byte(`{"registrationId":"x","attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"certificate":"AAAA"}}}},"initialTwin":{"tags":{}}}`))
	f.Add([]byte(`{"createdDateTimeUtc":"","registrationState":{"x":1},"attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"AAAAAAAAAAAAAAAAAAAAAA=="}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeEnrollment(data)
		if err != nil {
			return
		}
		if err := ValidateEnrollment(e, "", nil, zeroReader{}); err != nil {
			return
		}
		if ValidateID(e.RegistrationID) != nil {
			t.Fatalf("accepted id %q", e.RegistrationID)
		}
		out, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("re-encoding an accepted enrollment: %v", err)
		}
		e2, err := DecodeEnrollment(out)
		if err != nil {
			t.Fatalf("decoding our own encoding %s: %v", out, err)
		}
		if err := ValidateEnrollment(e2, e.RegistrationID, e, zeroReader{}); err != nil {
			t.Fatalf("our own encoding %s no longer validates: %v", out, err)
		}
		out2, _ := json.Marshal(e2)
		if !bytes.Equal(out, out2) {
			t.Fatalf("not stable:\n%s\n%s", out, out2)
		}
	})
}

// TestFuzzSeedsValid checks that the well-formed seeds are accepted, so the
// fuzzer starts from inputs that reach the round trip.
func TestFuzzSeedsValid(t *testing.T) {
	for _, name := range []string{"tpm", "x509_pem", "x509_der", "symmetric_full", "custom_alloc"} {
		raw, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzEnrollmentJSON", name))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitN(string(raw), "\n", 3)
		body, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		e, err := DecodeEnrollment([]byte(body))
		if err == nil {
			err = ValidateEnrollment(e, "", nil, zeroReader{})
		}
		if err != nil {
			t.Errorf("seed %s rejected: %v", name, err)
		}
	}
}

// FuzzLinkedHubJSON feeds untrusted bodies to the linked hub decoder and
// validator: no panic; whatever is accepted has a valid name and
// connection string for that hub, and survives a round trip.
func FuzzLinkedHubJSON(f *testing.F) {
	f.Add([]byte(`{"name":"h.example.net","connectionString":"HostName=h.example.net;SharedAccessKeyName=p;SharedAccessKey=aHViLXNlY3JldC1rZXktMDEyMzQ1Njc4OWFiY2RlZg==","allocationWeight":5}`))
	f.Add([]byte(`{"dpsdWebhook":{"url":"https://p/x","secret":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="},"applyAllocationPolicy":false}`))
	f.Add([]byte(`{"name":"h","etag":"x","createdDateTimeUtc":1,"dpsdX509Identity":"certificateAuthority"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := DecodeLinkedHub(data)
		if err != nil {
			return
		}
		if err := ValidateLinkedHub(h, "h.example.net", nil); err != nil {
			return
		}
		if !strings.EqualFold(h.Name, "h.example.net") || h.AllocationWeight < 0 || h.AllocationWeight > 1000 ||
			(h.ConnectionString != "" && h.Webhook != nil) {
			t.Fatalf("accepted %+v", h)
		}
		out, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		h2, err := DecodeLinkedHub(out)
		if err != nil {
			t.Fatalf("decoding our own encoding %s: %v", out, err)
		}
		if err := ValidateLinkedHub(h2, h.Name, h); err != nil {
			t.Fatalf("our own encoding %s no longer validates: %v", out, err)
		}
	})
}
