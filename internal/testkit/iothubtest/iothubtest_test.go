package iothubtest

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sas builds a service SAS by the published recipe (IoT Hub's "Control
// access with SAS"): sig = base64(HMAC-SHA256(key, sr + "\n" + se)), the
// fields sr, sig, se, skn, sig URL-encoded; sr is taken as given.
func sas(sr string, key []byte, se int64, skn string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(sr + "\n" + strconv.FormatInt(se, 10)))
	sig := base64.StdEncoding.EncodeToString(m.Sum(nil))
	return "SharedAccessSignature sr=" + sr + "&sig=" + url.QueryEscape(sig) + "&se=" + strconv.FormatInt(se, 10) + "&skn=" + skn
}

// TestSASVector: the stand-in accepts the token the official Node.js
// client computed for key MDEy... and sr "localhost" (the research notes'
// vector), in the field order the client sends.
func TestSASVector(t *testing.T) {
	key, _ := base64.StdEncoding.DecodeString("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	want := "SharedAccessSignature sr=localhost&sig=rVDLDEBxhkC8pO1oc%2FDHn%2BGuD3Y6yvC21gnlFEfk9eQ%3D&skn=iothubowner&se=1796412797"
	if got := sas("localhost", key, 1796412797, "iothubowner"); !strings.Contains(got, "sig=rVDLDEBxhkC8pO1oc%2FDHn%2BGuD3Y6yvC21gnlFEfk9eQ%3D") {
		t.Fatalf("the recipe gives %s, the client sent %s", got, want)
	}
	h := &Hub{HostName: "LocalHost", policy: "iothubowner", key: key}
	r, _ := http.NewRequest("GET", "https://localhost/devices/x", nil)
	r.Header.Set("Authorization", want)
	at := time.Unix(1796412797, 0).Add(-time.Minute) // while the token is valid
	if e := h.authorize(r, at); e != nil {
		t.Fatalf("the Node.js client's token refused: %+v", e)
	}
	r.Header.Set("Authorization", strings.Replace(want, "sig=r", "sig=s", 1))
	if e := h.authorize(r, at); e == nil || e.status != 401 {
		t.Fatal("a bad signature accepted")
	}
	r.Header.Set("Authorization", want)
	if e := h.authorize(r, time.Unix(1796412797, 0)); e == nil || e.status != 401 {
		t.Fatal("an expired token accepted")
	}
}

// call sends one request to the hub and decodes a JSON answer.
func call(t *testing.T, h *Hub, method, path, ifMatch string, body any) (int, map[string]any, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "https://"+h.HostName+path+"?api-version=2021-04-12", rd)
	if err != nil {
		t.Fatal(err)
	}
	se := time.Now().Add(time.Hour).Unix()
	req.Header.Set("Authorization", sas(url.QueryEscape(strings.ToLower(h.HostName)), h.key, se, DefaultPolicy))
	if ifMatch != "" {
		req.Header.Set("If-Match", ifMatch)
	}
	res, err := h.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	data, _ := io.ReadAll(res.Body)
	if len(data) > 0 {
		if err := json.Unmarshal(data, &out); err != nil {
			t.Fatalf("%s %s: %d %q", method, path, res.StatusCode, data)
		}
	}
	return res.StatusCode, out, res.Header
}

// TestRegistryRules: create, conditional update, delete and twin writes
// follow the API specification, errors come in the hub's form.
func TestRegistryRules(t *testing.T) {
	h := Start(t, Options{})
	dev := map[string]any{"deviceId": "dev%1:a", "authentication": map[string]any{"type": "sas",
		"symmetricKey": map[string]any{"primaryKey": "", "secondaryKey": ""}}}
	st, d, _ := call(t, h, "PUT", "/devices/dev%251:a", "", dev)
	if st != 200 || d["etag"] == "" || d["deviceId"] != "dev%1:a" {
		t.Fatalf("create: %d %v", st, d)
	}
	keys := d["authentication"].(map[string]any)["symmetricKey"].(map[string]any)
	if keys["primaryKey"] == "" || keys["secondaryKey"] == "" {
		t.Fatalf("empty keys were not generated: %v", keys)
	}
	st, e, hdr := call(t, h, "PUT", "/devices/dev%251:a", "", dev)
	if st != 409 || hdr.Get("iothub-errorcode") != "DeviceAlreadyExists" || !strings.HasPrefix(e["Message"].(string), "ErrorCode:DeviceAlreadyExists;") {
		t.Fatalf("second create: %d %v %v", st, e, hdr)
	}
	if st, _, _ := call(t, h, "PUT", "/devices/dev%251:a", `"stale"`, dev); st != 412 {
		t.Fatalf("stale update: %d", st)
	}
	dev["status"] = "disabled"
	if st, d2, _ := call(t, h, "PUT", "/devices/dev%251:a", `"`+d["etag"].(string)+`"`, dev); st != 200 || d2["status"] != "disabled" || d2["etag"] == d["etag"] {
		t.Fatalf("update: %d %v", st, d2)
	}
	if st, _, _ := call(t, h, "PUT", "/devices/other", "", map[string]any{"deviceId": "dev"}); st != 400 {
		t.Fatalf("id mismatch: %d", st)
	}
	bad := map[string]any{"deviceId": "x", "authentication": map[string]any{"type": "selfSigned", "x509Thumbprint": map[string]any{"primaryThumbprint": "xyz"}}}
	if st, _, _ := call(t, h, "PUT", "/devices/x", "", bad); st != 400 {
		t.Fatalf("bad thumbprint: %d", st)
	}
	// Twins: patch merges (null removes), put replaces, metadata answered,
	// arrays and $ keys refused.
	patch := map[string]any{"tags": map[string]any{"a": 1, "b": "x"}, "properties": map[string]any{"desired": map[string]any{"c": true}}}
	if st, tw, _ := call(t, h, "PATCH", "/twins/dev%251:a", `"*"`, patch); st != 200 || tw["tags"].(map[string]any)["a"] != float64(1) {
		t.Fatalf("patch: %d %v", st, tw)
	}
	if st, _, _ := call(t, h, "PATCH", "/twins/dev%251:a", "", map[string]any{"tags": map[string]any{"b": nil}}); st != 200 {
		t.Fatal(st)
	}
	tags, desired, _ := h.Twin("dev%1:a")
	if _, ok := tags["b"]; ok || tags["a"] != float64(1) || desired["c"] != true {
		t.Fatalf("after patches: %v %v", tags, desired)
	}
	_, tw, _ := call(t, h, "GET", "/twins/dev%251:a", "", nil)
	if _, ok := tw["properties"].(map[string]any)["desired"].(map[string]any)["$metadata"]; !ok {
		t.Fatalf("twin without $metadata: %v", tw)
	}
	for _, body := range []map[string]any{
		{"tags": map[string]any{"l": []any{1}}},
		{"tags": map[string]any{"$x": 1}},
		{"properties": map[string]any{"desired": map[string]any{"a.b": 1}}},
		{"properties": map[string]any{"reported": map[string]any{"a": 1}}},
	} {
		if st, _, _ := call(t, h, "PUT", "/twins/dev%251:a", `"*"`, body); st != 400 {
			t.Fatalf("%v: %d", body, st)
		}
	}
	if st, _, _ := call(t, h, "PUT", "/twins/dev%251:a", `"*"`, map[string]any{"tags": map[string]any{"z": 1}}); st != 200 {
		t.Fatal(st)
	}
	if tags, desired, _ := h.Twin("dev%1:a"); len(tags) != 1 || len(desired) != 0 {
		t.Fatalf("after replace: %v %v", tags, desired)
	}
	if st, _, _ := call(t, h, "DELETE", "/devices/dev%251:a", `"*"`, nil); st != 204 {
		t.Fatalf("delete: %d", st)
	}
	if st, _, hdr := call(t, h, "GET", "/devices/dev%251:a", "", nil); st != 404 || hdr.Get("iothub-errorcode") != "DeviceNotFound" {
		t.Fatalf("get deleted: %d", st)
	}
	if h.Creates("dev%1:a") != 1 || h.Count("update") != 1 || h.Count("delete") != 1 {
		t.Fatalf("counts: creates %d updates %d deletes %d", h.Creates("dev%1:a"), h.Count("update"), h.Count("delete"))
	}
}

// TestAuthorization: no token, a token for another hub, an expired one
// or another policy's are 401.
func TestAuthorization(t *testing.T) {
	h := Start(t, Options{})
	for name, auth := range map[string]string{
		"none":        "",
		"other hub":   sas("other.example.net", h.key, time.Now().Add(time.Hour).Unix(), DefaultPolicy),
		"expired":     sas(url.QueryEscape(strings.ToLower(h.HostName)), h.key, time.Now().Add(-time.Minute).Unix(), DefaultPolicy),
		"policy":      sas(url.QueryEscape(strings.ToLower(h.HostName)), h.key, time.Now().Add(time.Hour).Unix(), "device"),
		"another key": sas(url.QueryEscape(strings.ToLower(h.HostName)), []byte("another key, 16+"), time.Now().Add(time.Hour).Unix(), DefaultPolicy),
	} {
		req, _ := http.NewRequest("GET", "https://"+h.HostName+"/devices/x?api-version=2021-04-12", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		res, err := h.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 401 || res.Header.Get("iothub-errorcode") != "IotHubUnauthorizedAccess" {
			t.Errorf("%s: %d", name, res.StatusCode)
		}
	}
}

// TestFaults: throttling answers 429 for the next n requests; a hub that
// is down closes connections unanswered.
func TestFaults(t *testing.T) {
	h := Start(t, Options{})
	h.Throttle(2, 3*time.Second)
	for i := range 2 {
		st, _, hdr := call(t, h, "GET", "/devices/x", "", nil)
		if st != 429 || hdr.Get("Retry-After") != "3" || hdr.Get("iothub-errorcode") != "ThrottlingException" {
			t.Fatalf("request %d: %d %v", i, st, hdr)
		}
	}
	if st, _, _ := call(t, h, "GET", "/devices/x", "", nil); st != 404 {
		t.Fatalf("after throttling: %d", st)
	}
	h.SetDown(true)
	req, _ := http.NewRequest("GET", "https://"+h.HostName+"/devices/x?api-version=2021-04-12", nil)
	if res, err := h.Client().Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("a down hub answered %d", res.StatusCode)
	}
}

// TestDeviceClassBody: a create with the body the official Node.js client's
// Device class sends (its defaults: cloudToDeviceMessageCount the string
// "0", nulls for the service's members, keys null, no authentication type)
// creates a device with generated keys; those members are the service's.
func TestDeviceClassBody(t *testing.T) {
	h := Start(t, Options{})
	body := map[string]any{
		"deviceId": "class-device", "generationId": nil, "etag": nil, "connectionState": "disconnected",
		"status": "enabled", "statusReason": nil, "connectionStateUpdatedTime": nil, "statusUpdatedTime": nil,
		"lastActivityTime": nil, "cloudToDeviceMessageCount": "0", "capabilities": map[string]any{},
		"authentication": map[string]any{
			"symmetricKey":   map[string]any{"primaryKey": nil, "secondaryKey": nil},
			"x509Thumbprint": map[string]any{"primaryThumbprint": nil, "secondaryThumbprint": nil},
			"type":           "sas",
		},
	}
	st, d, _ := call(t, h, "PUT", "/devices/class-device", "", body)
	if st != 200 || d["cloudToDeviceMessageCount"] != float64(0) || d["connectionState"] != "Disconnected" {
		t.Fatalf("create: %d %v", st, d)
	}
	if id, ok := h.Device("class-device"); !ok || id.AuthType != "sas" || id.PrimaryKey == "" || id.SecondaryKey == "" {
		t.Fatalf("stored: %+v %v", id, ok)
	}
}
