package hubconn_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/hubconn"
	"github.com/tpmdps/dpsd/internal/testkit/iothubtest"
)

const (
	keyA = "a2V5LWEtMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODk="
	keyB = "a2V5LWItMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODk="
)

func connectorOf(t *testing.T, hub *iothubtest.Hub) *hubconn.IoTHub {
	t.Helper()
	cs, err := hubconn.ParseConnectionString(hub.ConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	return hubconn.NewIoTHub(cs, hubconn.Options{Client: hub.Client(), RequestTimeout: 2 * time.Second})
}

func sasDevice(id, p, s string) *hubconn.Device {
	return &hubconn.Device{DeviceID: id, RegistrationID: id, Auth: hubconn.Auth{Type: hubconn.AuthSAS, PrimaryKey: p, SecondaryKey: s}}
}

func TestParseConnectionString(t *testing.T) {
	cs, err := hubconn.ParseConnectionString(" HostName=h.azure-devices.net; sharedaccesskeyname=registryReadWrite;SharedAccessKey=" + keyA + ";DeviceId=x ")
	if err != nil || cs.HostName != "h.azure-devices.net" || cs.KeyName != "registryReadWrite" || base64.StdEncoding.EncodeToString(cs.Key) != keyA {
		t.Fatalf("%+v %v", cs, err)
	}
	if got := cs.Redacted(); strings.Contains(got, keyA) || got != "HostName=h.azure-devices.net;SharedAccessKeyName=registryReadWrite" {
		t.Fatalf("redacted: %q", got)
	}
	if got := hubconn.RedactConnectionString("HostName=h;SharedAccessKeyName=p;SharedAccessKey=" + keyA); got != "HostName=h;SharedAccessKeyName=p" {
		t.Fatalf("RedactConnectionString: %q", got)
	}
	for _, bad := range []string{
		"", "SharedAccessKeyName=p;SharedAccessKey=" + keyA, "HostName=h;SharedAccessKey=" + keyA, "HostName=h;SharedAccessKeyName=p",
		"HostName=h;SharedAccessKeyName=p;SharedAccessKey=not-base64!", "HostName=h;SharedAccessKeyName=p;SharedAccessKey=c2hvcnQ=",
		"HostName=h/x;SharedAccessKeyName=p;SharedAccessKey=" + keyA, "HostName=h;SharedAccessKeyName=p;" + keyA,
	} {
		_, err := hubconn.ParseConnectionString(bad)
		if !errors.Is(err, hubconn.ErrConnectionString) {
			t.Errorf("%q: %v", bad, err)
		}
		if err != nil && strings.Contains(err.Error(), keyA) {
			t.Errorf("the error shows the key: %v", err)
		}
	}
}

// TestRegisterIdempotent: the first Register creates the identity and sets
// the twin; repeating it (a retry, or the same registration again) writes
// nothing new and never creates a second identity; new keys update the
// identity in place.
func TestRegisterIdempotent(t *testing.T) {
	ctx := context.Background()
	hub := iothubtest.Start(t, iothubtest.Options{})
	c := connectorOf(t, hub)
	twin := &hubconn.Twin{Tags: json.RawMessage(`{"deviceType":"toaster"}`), Desired: json.RawMessage(`{"state":"ready"}`)}
	d := sasDevice("dev-1", keyA, keyB)
	d.IoTEdge = true
	if err := c.Register(ctx, d, twin); err != nil {
		t.Fatal(err)
	}
	id, ok := hub.Device("dev-1")
	if !ok || id.AuthType != "sas" || id.PrimaryKey != keyA || id.SecondaryKey != keyB || !id.IoTEdge || id.Status != "enabled" {
		t.Fatalf("identity: %+v", id)
	}
	tags, desired, _ := hub.Twin("dev-1")
	if !reflect.DeepEqual(tags, map[string]any{"deviceType": "toaster"}) || !reflect.DeepEqual(desired, map[string]any{"state": "ready"}) {
		t.Fatalf("twin: %v %v", tags, desired)
	}
	if err := c.Register(ctx, d, nil); err != nil {
		t.Fatal(err)
	}
	if hub.Creates("dev-1") != 1 || hub.Count("update") != 0 {
		t.Fatalf("repeat: creates %d updates %d", hub.Creates("dev-1"), hub.Count("update"))
	}
	if err := c.Register(ctx, sasDevice("dev-1", keyB, keyA), nil); err != nil {
		t.Fatal(err)
	}
	if id, _ := hub.Device("dev-1"); id.PrimaryKey != keyB || hub.Creates("dev-1") != 1 || hub.Count("update") != 1 || id.IoTEdge {
		t.Fatalf("new keys: %+v, creates %d updates %d", id, hub.Creates("dev-1"), hub.Count("update"))
	}
	// The twin the first Register set is still there (no twin given since).
	if tags, _, _ := hub.Twin("dev-1"); tags["deviceType"] != "toaster" {
		t.Fatalf("twin changed: %v", tags)
	}
}

// TestRegisterAfterLostAnswer: a Register whose answer never arrives
// (the client gave up after the hub created the device) is repeated: the
// identity exists once, with the twin.
func TestRegisterAfterLostAnswer(t *testing.T) {
	hub := iothubtest.Start(t, iothubtest.Options{})
	c := connectorOf(t, hub)
	created, release := hub.HoldCreates()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Register(ctx, sasDevice("dev-2", keyA, keyB), nil) }()
	if id := <-created; id != "dev-2" {
		t.Fatalf("created %q", id)
	}
	cancel()
	var e *hubconn.Error
	if err := <-errc; !errors.As(err, &e) || !e.Retryable {
		t.Fatalf("the lost answer: %v", err)
	}
	release()
	twin := &hubconn.Twin{Tags: json.RawMessage(`{"a":"b"}`)}
	if err := c.Register(context.Background(), sasDevice("dev-2", keyA, keyB), twin); err != nil {
		t.Fatal(err)
	}
	if n := hub.Creates("dev-2"); n != 1 {
		t.Fatalf("created %d times", n)
	}
	if tags, _, _ := hub.Twin("dev-2"); tags["a"] != "b" {
		t.Fatalf("twin %v", tags)
	}
}

// TestMigrate: the twin read from one hub (without the hub's $metadata
// and $version) is written to another, and the device is removed from the
// first; removing a device that is gone is fine.
func TestMigrate(t *testing.T) {
	ctx := context.Background()
	from := iothubtest.Start(t, iothubtest.Options{})
	to := iothubtest.Start(t, iothubtest.Options{})
	from.AddDevice("dev-3", keyA, keyB, map[string]any{"site": "north", "nested": map[string]any{"x": 1.0}}, map[string]any{"fw": "2.0"})
	cf, ct := connectorOf(t, from), connectorOf(t, to)
	tw, err := cf.Twin(ctx, "dev-3")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(tw.Desired), "$") || strings.Contains(string(tw.Tags), "$") {
		t.Fatalf("metadata kept: %s %s", tw.Tags, tw.Desired)
	}
	if err := ct.Register(ctx, sasDevice("dev-3", keyA, keyB), tw); err != nil {
		t.Fatal(err)
	}
	if err := cf.Remove(ctx, "dev-3"); err != nil {
		t.Fatal(err)
	}
	tags, desired, ok := to.Twin("dev-3")
	if !ok || !reflect.DeepEqual(tags, map[string]any{"site": "north", "nested": map[string]any{"x": 1.0}}) || desired["fw"] != "2.0" {
		t.Fatalf("migrated twin: %v %v", tags, desired)
	}
	if _, ok := from.Device("dev-3"); ok {
		t.Fatal("still in the old hub")
	}
	if err := cf.Remove(ctx, "dev-3"); err != nil {
		t.Fatalf("removing a removed device: %v", err)
	}
	if _, err := cf.Twin(ctx, "dev-3"); !errors.Is(err, hubconn.ErrNotFound) {
		t.Fatalf("twin of a removed device: %v", err)
	}
}

// TestX509Identities: selfSigned with thumbprints and certificateAuthority.
func TestX509Identities(t *testing.T) {
	ctx := context.Background()
	hub := iothubtest.Start(t, iothubtest.Options{})
	c := connectorOf(t, hub)
	thumb := strings.Repeat("AB", 32)
	if err := c.Register(ctx, &hubconn.Device{DeviceID: "x1", Auth: hubconn.Auth{Type: hubconn.AuthSelfSigned, PrimaryThumbprint: thumb}}, nil); err != nil {
		t.Fatal(err)
	}
	if id, _ := hub.Device("x1"); id.AuthType != "selfSigned" || id.PrimaryThumbprint != thumb {
		t.Fatalf("%+v", id)
	}
	// The same thumbprint in lower case is the same identity: nothing written.
	if err := c.Register(ctx, &hubconn.Device{DeviceID: "x1", Auth: hubconn.Auth{Type: hubconn.AuthSelfSigned, PrimaryThumbprint: strings.ToLower(thumb)}}, nil); err != nil {
		t.Fatal(err)
	}
	if hub.Count("update") != 0 {
		t.Fatal("updated for a thumbprint's case")
	}
	if err := c.Register(ctx, &hubconn.Device{DeviceID: "x2", Auth: hubconn.Auth{Type: hubconn.AuthCertificateAuthority}}, nil); err != nil {
		t.Fatal(err)
	}
	if id, _ := hub.Device("x2"); id.AuthType != "certificateAuthority" {
		t.Fatalf("%+v", id)
	}
}

// TestDisabledStaysDisabled: an identity the hub's operator disabled is
// updated with the new credential and stays disabled.
func TestDisabledStaysDisabled(t *testing.T) {
	ctx := context.Background()
	hub := iothubtest.Start(t, iothubtest.Options{})
	c := connectorOf(t, hub)
	if err := c.Register(ctx, sasDevice("d", keyA, keyB), nil); err != nil {
		t.Fatal(err)
	}
	// Disable it as an operator would, then register with new keys.
	hub.SetStatus("d", "disabled")
	if err := c.Register(ctx, sasDevice("d", keyB, keyA), nil); err != nil {
		t.Fatal(err)
	}
	if id, _ := hub.Device("d"); id.Status != "disabled" || id.PrimaryKey != keyB {
		t.Fatalf("%+v", id)
	}
}

// TestHubErrors: throttling and a hub that is down are retryable (with
// the hub's Retry-After); a wrong key and a device id the hub refuses are
// final, with the hub's error code; no error carries the key.
func TestHubErrors(t *testing.T) {
	ctx := context.Background()
	hub := iothubtest.Start(t, iothubtest.Options{})
	c := connectorOf(t, hub)
	hub.Throttle(1, 2*time.Second)
	err := c.Register(ctx, sasDevice("d", keyA, keyB), nil)
	var e *hubconn.Error
	if !errors.As(err, &e) || !e.Retryable || e.Status != 429 || e.Code != "ThrottlingException" || e.RetryAfter != 2*time.Second {
		t.Fatalf("throttled: %#v", err)
	}
	hub.SetDown(true)
	err = c.Register(ctx, sasDevice("d", keyA, keyB), nil)
	if !errors.As(err, &e) || !e.Retryable || e.Status != 0 {
		t.Fatalf("down: %#v", err)
	}
	hub.SetDown(false)
	cs := mustCS(t, hub.ConnectionString)
	cs.Key = []byte("0123456789abcdef0123456789abcdef")
	wrong := hubconn.NewIoTHub(cs, hubconn.Options{Client: hub.Client()})
	err = wrong.Register(ctx, sasDevice("d", keyA, keyB), nil)
	if !errors.As(err, &e) || e.Retryable || e.Status != 401 || e.Code != "IotHubUnauthorizedAccess" {
		t.Fatalf("wrong key: %#v", err)
	}
	err = c.Register(ctx, sasDevice("bad id", keyA, keyB), nil)
	if !errors.As(err, &e) || e.Retryable || e.Status != 400 || e.Code != "ArgumentInvalid" {
		t.Fatalf("bad id: %#v", err)
	}
	if strings.Contains(err.Error(), keyA) || strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(mustCS(t, hub.ConnectionString).Key)) {
		t.Fatalf("an error carries a key: %v", err)
	}
	if n := hub.Creates("d"); n != 0 {
		t.Fatalf("created %d", n)
	}
}

func mustCS(t *testing.T, s string) hubconn.ConnectionString {
	t.Helper()
	cs, err := hubconn.ParseConnectionString(s)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}
