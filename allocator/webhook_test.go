package allocator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/allocator/allocatortest"
)

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// generic decodes JSON into maps and slices, for comparisons that ignore
// formatting and field order.
func generic(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%v in %s", err, b)
	}
	return v
}

// TestRequestFixturesRoundTrip: the documentation's AllocationRequest
// samples (F1, initial assignment; F5, a re-registration with a payload)
// decode into Request and encode back to the same JSON, every field kept:
// the types name every field the cloud sends.
func TestRequestFixturesRoundTrip(t *testing.T) {
	for _, name := range []string{"f1-request-initial.json", "f5-request-reregistration.json"} {
		raw := fixture(t, name)
		var req allocator.Request
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out, err := json.Marshal(&req)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(generic(t, out), generic(t, raw)) {
			t.Fatalf("%s does not round-trip:\n got %s\nwant %s", name, out, raw)
		}
	}
}

// TestResponseFixtures: the documentation's AllocationResponse samples
// (F3, F4 with a payload, F6) parse unchanged.
func TestResponseFixtures(t *testing.T) {
	twin := `{"properties":{"desired":{"state":"ready","darknessSetting":"medium"}},"tags":{"deviceType":"toaster"}}`
	for _, c := range []struct {
		file, hub, payload string
	}{
		{"f3-response.json", "custom-allocation-toasters-hub.azure-devices.net", ""},
		{"f4-response-payload.json", "custom-allocation-toasters-hub.azure-devices.net", `{"property1":"value1"}`},
		{"f6-response.json", "contoso-toasters-hub-1098.azure-devices.net", ""},
	} {
		r, err := allocator.ParseResponse(fixture(t, c.file))
		if err != nil {
			t.Fatalf("%s: %v", c.file, err)
		}
		if r.IoTHubHostName != c.hub || !reflect.DeepEqual(generic(t, r.InitialTwin), generic(t, []byte(twin))) {
			t.Fatalf("%s: %+v", c.file, r)
		}
		if c.payload == "" && r.Payload != nil || c.payload != "" && !reflect.DeepEqual(generic(t, r.Payload), generic(t, []byte(c.payload))) {
			t.Fatalf("%s payload: %s", c.file, r.Payload)
		}
	}
}

// TestParseResponse: the hub is required (400208), matched
// case-insensitively; null twin and payload are absent; a twin that is not
// an object and malformed answers are 400207.
func TestParseResponse(t *testing.T) {
	for _, c := range []struct {
		body string
		code int
		hub  string
	}{
		{`{"iotHubHostname":"h.example.net"}`, 0, "h.example.net"},
		{`{"IOTHUBHOSTNAME":" h.example.net ","initialTwin":null,"payload":null}`, 0, "h.example.net"},
		{`{"iotHubHostName":""}`, allocator.ErrorCodeHubNotSpecified, ""},
		{`{"iotHubHostName":null}`, allocator.ErrorCodeHubNotSpecified, ""},
		{`{}`, allocator.ErrorCodeHubNotSpecified, ""},
		{`{"iotHubHostName":"h","initialTwin":[1]}`, allocator.ErrorCodeFailed, ""},
		{`{"iotHubHostName":"h","initialTwin":"x"}`, allocator.ErrorCodeFailed, ""},
		{`not json`, allocator.ErrorCodeFailed, ""},
		{`{"iotHubHostName":7}`, allocator.ErrorCodeFailed, ""},
		{``, allocator.ErrorCodeFailed, ""},
	} {
		r, err := allocator.ParseResponse([]byte(c.body))
		if c.code == 0 {
			if err != nil || r.IoTHubHostName != c.hub || r.InitialTwin != nil || r.Payload != nil {
				t.Errorf("%s: %+v %v", c.body, r, err)
			}
			continue
		}
		var e *allocator.Error
		if !errors.As(err, &e) || e.ErrorCode != c.code || e.Retryable {
			t.Errorf("%s: %v, want error code %d", c.body, err, c.code)
		}
	}
}

func TestMaskWebhookURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://f.azurewebsites.net/api/HttpTrigger1?code=abc==":                          "https://f.azurewebsites.net/api/HttpTrigger1?****",
		"https://f.example/api/x":                                                          "https://f.example/api/x",
		"https://f.example/api/x?code=a&clientId=default#frag":                             "https://f.example/api/x?****",
		"https://f.example/api/x?":                                                         "https://f.example/api/x?****",
		"https://f.example/%zz?code=secret":                                                "https://f.example/%zz?****",
		"https://custom-allocation-function-app-3.azurewebsites.net/api/HttpTrigger1?****": "https://custom-allocation-function-app-3.azurewebsites.net/api/HttpTrigger1?****",
	} {
		if got := allocator.MaskWebhookURL(in); got != want {
			t.Errorf("MaskWebhookURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestWebhookOutcomes: the cloud's failure semantics (the tutorial's
// troubleshooting table): 401 is 400209, 429 and above are retried, other
// errors are 400207, a 200 without a hub 400208; a webhook that does not
// answer in time is retryable and marked as a timeout; error messages
// never carry the function key.
func TestWebhookOutcomes(t *testing.T) {
	ctx := context.Background()
	srv := allocatortest.NewServer(t, allocatortest.Contoso)
	w := allocator.NewWebhook(allocator.WebhookOptions{Client: srv.Client})
	req := &allocator.Request{
		DeviceRuntimeContext: allocator.DeviceRuntimeContext{RegistrationID: "breakroom499-contoso-tstrsd-007", SymmetricKey: &struct{}{}},
		LinkedHubs:           []string{"contoso-toasters-hub-1098.azure-devices.net", "contoso-heatpumps-hub-1098.azure-devices.net"},
	}
	r, err := w.Allocate(ctx, allocator.Definition{URL: srv.URL}, req)
	if err != nil || r.IoTHubHostName != "contoso-toasters-hub-1098.azure-devices.net" || !bytes.Contains(r.InitialTwin, []byte(`"deviceType":"toaster"`)) {
		t.Fatalf("contoso answer: %+v %v", r, err)
	}
	if n := srv.Count(); n != 1 {
		t.Fatalf("%d requests", n)
	}
	var sent allocator.Request
	if err := json.Unmarshal(srv.Requests()[0], &sent); err != nil || !reflect.DeepEqual(&sent, req) {
		t.Fatalf("sent %+v (%v)", sent, err)
	}
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	for _, c := range []struct {
		name      string
		h         http.HandlerFunc
		url       string
		code      int
		retryable bool
		timeout   bool
	}{
		{"401", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(401) }, "", allocator.ErrorCodeUnauthorized, false, false},
		{"wrong code is 401 too", nil, strings.Replace(srv.URL, allocatortest.Code, "wrong", 1), allocator.ErrorCodeUnauthorized, false, false},
		{"400", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "Unrecognized device registration.", 400) }, "", allocator.ErrorCodeFailed, false, false},
		{"404", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404) }, "", allocator.ErrorCodeFailed, false, false},
		{"302", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(302) }, "", allocator.ErrorCodeFailed, false, false},
		{"429", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(429) }, "", 0, true, false},
		{"500", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }, "", 0, true, false},
		{"503", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }, "", 0, true, false},
		{"200 without hub", func(w http.ResponseWriter, r *http.Request) {
			allocatortest.JSON(w, 200, map[string]any{"initialTwin": nil})
		}, "", allocator.ErrorCodeHubNotSpecified, false, false},
		{"200 not json", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("<html>")) }, "", allocator.ErrorCodeFailed, false, false},
		{"timeout", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-block:
			case <-r.Context().Done():
			}
		}, "", 0, true, true},
		{"plain http refused", nil, strings.Replace(srv.URL, "https://", "http://", 1), allocator.ErrorCodeFailed, false, false},
		{"unreachable", nil, "https://127.0.0.1:1/api/x?code=" + allocatortest.Code, 0, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.h != nil {
				srv.SetHandler(c.h)
			}
			u := c.url
			if u == "" {
				u = srv.URL
			}
			_, err := w.Allocate(ctx, allocator.Definition{URL: u, Timeout: 300 * time.Millisecond}, req)
			var e *allocator.Error
			if !errors.As(err, &e) {
				t.Fatalf("%v, want an *allocator.Error", err)
			}
			if e.Retryable != c.retryable || e.Timeout != c.timeout || (!c.retryable && e.ErrorCode != c.code) {
				t.Fatalf("%+v, want code %d retryable %v timeout %v", e, c.code, c.retryable, c.timeout)
			}
			if strings.Contains(e.Error(), allocatortest.Code) || strings.Contains(e.Error(), "code=") {
				t.Fatalf("the error carries the function key: %v", e)
			}
		})
	}
}
