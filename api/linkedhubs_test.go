package api

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

const hubKeyB64 = "aHViLXNlY3JldC1rZXktMDEyMzQ1Njc4OWFiY2RlZg=="

func hubCS(host string) string {
	return "HostName=" + host + ";SharedAccessKeyName=registryReadWrite;SharedAccessKey=" + hubKeyB64
}

func (e *testEnv) readerHeader() map[string]string {
	return map[string]string{"Authorization": attest.SignSAS(e.readerKey, testHost, time.Now().Add(time.Hour), readerName)}
}

// TestLinkedHubs: linked hubs are created, read, listed, updated under
// If-Match and deleted; answers never carry the connection string's key
// or the webhook's secret, and a record written back without them keeps
// the stored ones; reads need the read right, writes the write right.
func TestLinkedHubs(t *testing.T) {
	e := newTestEnv(t)
	name := "Hub-1.azure-devices.net"
	r := e.request("PUT", "/linkedHubs/"+name, map[string]any{"connectionString": hubCS(name), "allocationWeight": 10}, nil)
	out := decodeAs[store.LinkedHub](t, r)
	if out.Name != name || out.AllocationWeight != 10 || out.ConnectionString != "HostName="+name+";SharedAccessKeyName=registryReadWrite" || out.ETag == "" {
		t.Fatalf("created: %s", r.body)
	}
	if strings.Contains(string(r.body), hubKeyB64) {
		t.Fatalf("the key was answered: %s", r.body)
	}
	// Read with the read right: no key.
	r = e.request("GET", "/linkedHubs/hub-1.AZURE-devices.net", nil, e.readerHeader())
	got := decodeAs[store.LinkedHub](t, r)
	if got.ETag != out.ETag || strings.Contains(string(r.body), hubKeyB64) || r.header.Get("ETag") != `"`+out.ETag+`"` {
		t.Fatalf("read: %s", r.body)
	}
	// Written back as read (no key), with a change: the stored key stays.
	got.AllocationWeight = 20
	r = e.request("PUT", "/linkedHubs/"+name, got, map[string]string{"If-Match": `"` + got.ETag + `"`})
	upd := decodeAs[store.LinkedHub](t, r)
	stored, err := e.st.GetLinkedHub(t.Context(), name)
	if err != nil || stored.ConnectionString != hubCS(name) || stored.AllocationWeight != 20 || upd.ETag == got.ETag {
		t.Fatalf("after write-back: %+v %v", stored, err)
	}
	// Stale etag.
	e.request("PUT", "/linkedHubs/"+name, got, map[string]string{"If-Match": `"` + got.ETag + `"`}).expectError(t, 412, codePreconditionFailed)
	// A webhook hub; its secret never answered.
	secret := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	r = e.request("PUT", "/linkedHubs/platform.local", map[string]any{"dpsdWebhook": map[string]any{"url": "https://platform.local/dps", "secret": secret}, "applyAllocationPolicy": false}, nil)
	if wh := decodeAs[store.LinkedHub](t, r); wh.Webhook == nil || wh.Webhook.Secret != "" || wh.Allocates() || strings.Contains(string(r.body), secret) {
		t.Fatalf("webhook hub: %s", r.body)
	}
	r = e.request("PUT", "/linkedHubs/platform.local", map[string]any{"dpsdWebhook": map[string]any{"url": "https://platform.local/v2"}}, nil)
	if r.status != 200 {
		t.Fatalf("update without secret: %s", r.body)
	}
	if s, _ := e.st.GetLinkedHub(t.Context(), "platform.local"); s.Webhook.Secret != secret || s.Webhook.URL != "https://platform.local/v2" {
		t.Fatalf("webhook secret not kept: %+v", s.Webhook)
	}
	// List (read right).
	r = e.request("GET", "/linkedHubs", nil, e.readerHeader())
	list := decodeAs[[]store.LinkedHub](t, r)
	if len(list) != 2 || list[0].Name != name || list[1].Name != "platform.local" || strings.Contains(string(r.body), hubKeyB64) || strings.Contains(string(r.body), secret) {
		t.Fatalf("list: %s", r.body)
	}
	// Writes need the write right.
	e.request("PUT", "/linkedHubs/x.example.net", map[string]any{}, e.readerHeader()).expectError(t, 403, codeForbidden)
	e.request("DELETE", "/linkedHubs/"+name, nil, e.readerHeader()).expectError(t, 403, codeForbidden)
	// Delete.
	if r := e.request("DELETE", "/linkedHubs/"+name, nil, nil); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	e.request("GET", "/linkedHubs/"+name, nil, nil).expectError(t, 404, codeLinkedHubNotFound)
	e.request("DELETE", "/linkedHubs/"+name, nil, nil).expectError(t, 404, codeLinkedHubNotFound)
	if !strings.Contains(e.logs.String(), `"kind":"linkedHub"`) || strings.Contains(e.logs.String(), hubKeyB64) || strings.Contains(e.logs.String(), secret) {
		t.Fatalf("audit: %s", e.logs.String())
	}
}

// TestLinkedHubValidation: bad records are refused with a clear 400.
func TestLinkedHubValidation(t *testing.T) {
	e := newTestEnv(t)
	short := base64.StdEncoding.EncodeToString([]byte("short"))
	for name, c := range map[string]struct {
		path string
		body any
		msg  string
	}{
		"name differs":      {"/linkedHubs/a.example.net", map[string]any{"name": "b.example.net"}, "differs"},
		"bad name":          {"/linkedHubs/a_b", map[string]any{}, "not a host name"},
		"weight":            {"/linkedHubs/a.example.net", map[string]any{"allocationWeight": 1001}, "between 1 and 1000"},
		"negative weight":   {"/linkedHubs/a.example.net", map[string]any{"allocationWeight": -1}, "between 1 and 1000"},
		"host differs":      {"/linkedHubs/a.example.net", map[string]any{"connectionString": hubCS("b.example.net")}, "is not the hub's name"},
		"no key":            {"/linkedHubs/a.example.net", map[string]any{"connectionString": "HostName=a.example.net;SharedAccessKeyName=p"}, "SharedAccessKey is missing"},
		"bad key":           {"/linkedHubs/a.example.net", map[string]any{"connectionString": "HostName=a.example.net;SharedAccessKeyName=p;SharedAccessKey=!!"}, "base64"},
		"both":              {"/linkedHubs/a.example.net", map[string]any{"connectionString": hubCS("a.example.net"), "dpsdWebhook": map[string]any{"url": "https://x/y", "secret": hubKeyB64}}, "not both"},
		"webhook http":      {"/linkedHubs/a.example.net", map[string]any{"dpsdWebhook": map[string]any{"url": "http://x/y", "secret": hubKeyB64}}, "https"},
		"webhook secret":    {"/linkedHubs/a.example.net", map[string]any{"dpsdWebhook": map[string]any{"url": "https://x/y", "secret": short}}, "at least 32"},
		"webhook no secret": {"/linkedHubs/a.example.net", map[string]any{"dpsdWebhook": map[string]any{"url": "https://x/y"}}, "at least 32"},
		"x509 identity":     {"/linkedHubs/a.example.net", map[string]any{"dpsdX509Identity": "none"}, "dpsdX509Identity"},
	} {
		r := e.request("PUT", c.path, c.body, nil)
		r.expectError(t, 400, 0)
		if msg := r.errorBody(t).Message; !strings.Contains(msg, c.msg) || strings.Contains(msg, hubKeyB64) {
			t.Errorf("%s: %q, want it to say %q", name, msg, c.msg)
		}
	}
	if n, _ := e.st.ListLinkedHubs(t.Context()); len(n) != 0 {
		t.Fatalf("a refused hub was written: %v", n)
	}
}

// TestLinkedHubLimit: at most store.MaxLinkedHubs hubs; replacing one at
// the limit is fine.
func TestLinkedHubLimit(t *testing.T) {
	e := newTestEnv(t)
	for i := range store.MaxLinkedHubs {
		if _, err := e.st.PutLinkedHub(t.Context(), &store.LinkedHub{Name: fmt.Sprintf("h%03d.example.net", i)}, ""); err != nil {
			t.Fatal(err)
		}
	}
	e.request("PUT", "/linkedHubs/one-more.example.net", map[string]any{}, nil).expectError(t, 403, codeQuotaExceeded)
	if r := e.request("PUT", "/linkedHubs/h000.example.net", map[string]any{"allocationWeight": 3}, nil); r.status != 200 {
		t.Fatalf("replace at the limit: %s", r.body)
	}
}

// TestCustomAllocationDefinition: the webhook URL must be https; answers
// mask its query (the function key) as the cloud does, and an enrollment
// written back with the masked URL keeps the stored one; the dpsd
// extensions are bounded.
func TestCustomAllocationDefinition(t *testing.T) {
	e := newTestEnv(t)
	const url = "https://alloc.example/api/HttpTrigger1?code=function-key-secret"
	body := symEnrollment("dev-1")
	body["allocationPolicy"] = "custom"
	body["customAllocationDefinition"] = map[string]any{"webhookUrl": url, "apiVersion": "2021-10-01", "dpsdTimeoutSeconds": 20, "dpsdFallbackPolicy": "hashed", "dpsdClientCertificate": "tenant-a"}
	r := e.request("PUT", "/enrollments/dev-1", body, nil)
	out := decodeAs[store.Enrollment](t, r)
	if out.CustomAllocationDefinition.WebhookURL != "https://alloc.example/api/HttpTrigger1?****" || strings.Contains(string(r.body), "function-key-secret") {
		t.Fatalf("answer: %s", r.body)
	}
	r = e.request("GET", "/enrollments/dev-1", nil, e.readerHeader())
	got := decodeAs[store.Enrollment](t, r)
	if strings.Contains(string(r.body), "function-key-secret") || got.CustomAllocationDefinition.TimeoutSeconds != 20 ||
		got.CustomAllocationDefinition.ClientCertificate != "tenant-a" {
		t.Fatalf("read: %s", r.body)
	}
	got.ProvisioningStatus = "disabled"
	got.Attestation = store.Attestation{Type: store.AttestationSymmetricKey}
	e.request("PUT", "/enrollments/dev-1", got, nil)
	if s, _ := e.st.GetEnrollment(t.Context(), "dev-1"); s.CustomAllocationDefinition.WebhookURL != url || s.ProvisioningStatus != "disabled" {
		t.Fatalf("masked write-back: %+v", s.CustomAllocationDefinition)
	}
	for name, def := range map[string]map[string]any{
		"http":          {"webhookUrl": "http://alloc.example/x", "apiVersion": "2021-10-01"},
		"masked":        {"webhookUrl": "https://other.example/x?****", "apiVersion": "2021-10-01"},
		"timeout":       {"webhookUrl": url, "apiVersion": "2021-10-01", "dpsdTimeoutSeconds": 301},
		"fallback":      {"webhookUrl": url, "apiVersion": "2021-10-01", "dpsdFallbackPolicy": "static"},
		"options alone": {"dpsdTimeoutSeconds": 5},
		"cert alone":    {"dpsdClientCertificate": "tenant-a"},
		"cert name":     {"webhookUrl": url, "apiVersion": "2021-10-01", "dpsdClientCertificate": "../ca"},
	} {
		b := symEnrollment("dev-2")
		b["customAllocationDefinition"] = def
		e.request("PUT", "/enrollments/dev-2", b, nil).expectError(t, 400, codeInvalidArgument)
		_ = name
	}
}
