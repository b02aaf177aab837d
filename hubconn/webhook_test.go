package hubconn_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/hubconn"
)

// receiver is a self-hosted platform's endpoint: it checks each request's
// signature as Verify does and records the events.
type receiver struct {
	srv    *httptest.Server
	secret []byte
	mu     sync.Mutex
	events []hubconn.WebhookEvent
	raw    [][]byte
	heads  []http.Header
	status int
}

func newReceiver(t *testing.T) (*receiver, string) {
	r := &receiver{secret: make([]byte, 32), status: 204}
	if _, err := rand.Read(r.secret); err != nil {
		t.Fatal(err)
	}
	r.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if err := hubconn.Verify(r.secret, req.Header.Get(hubconn.SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
			http.Error(w, err.Error(), 401)
			return
		}
		var ev hubconn.WebhookEvent
		if err := json.Unmarshal(body, &ev); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		r.mu.Lock()
		r.events = append(r.events, ev)
		r.raw = append(r.raw, body)
		r.heads = append(r.heads, req.Header.Clone())
		st := r.status
		r.mu.Unlock()
		w.WriteHeader(st)
	}))
	t.Cleanup(r.srv.Close)
	return r, base64.StdEncoding.EncodeToString(r.secret)
}

// TestWebhookConnector: a registration is posted signed, with the device,
// its hub, its twin and a reference to its key (a fingerprint, never the
// key); a removal too; the same delivery id for a retry; 503 is retryable
// and 400 final.
func TestWebhookConnector(t *testing.T) {
	ctx := context.Background()
	r, secret := newReceiver(t)
	w, err := hubconn.NewWebhook("hub.local", r.srv.URL+"/dps", secret, hubconn.Options{Client: r.srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	d := sasDevice("dev-1", keyA, keyB)
	d.AttestationType, d.EnrollmentGroupID = "symmetricKey", "grp"
	twin := &hubconn.Twin{Tags: json.RawMessage(`{"a":1}`)}
	if err := w.Register(ctx, d, twin); err != nil {
		t.Fatal(err)
	}
	if err := w.Register(ctx, d, twin); err != nil {
		t.Fatal(err)
	}
	if err := w.Remove(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	if len(r.events) != 3 {
		t.Fatalf("%d events", len(r.events))
	}
	ev := r.events[0]
	if ev.Event != hubconn.EventRegistered || ev.Hub != "hub.local" || ev.DeviceID != "dev-1" || ev.Registration.RegistrationID != "dev-1" ||
		ev.Registration.EnrollmentGroupID != "grp" || ev.Credential.Type != "sas" || ev.Credential.PrimaryKeyFingerprint != hubconn.KeyFingerprint(keyA) ||
		string(ev.Twin.Tags) != `{"a":1}` {
		t.Fatalf("event: %+v", ev)
	}
	for _, raw := range r.raw {
		if strings.Contains(string(raw), keyA) || strings.Contains(string(raw), keyB) {
			t.Fatalf("a key was posted: %s", raw)
		}
	}
	if r.heads[0].Get(hubconn.DeliveryHeader) == "" || r.heads[0].Get(hubconn.DeliveryHeader) != r.heads[1].Get(hubconn.DeliveryHeader) ||
		r.heads[2].Get(hubconn.DeliveryHeader) == r.heads[0].Get(hubconn.DeliveryHeader) {
		t.Fatal("delivery ids")
	}
	if r.events[2].Event != hubconn.EventRemoved || r.events[2].Credential != nil {
		t.Fatalf("removal: %+v", r.events[2])
	}
	if _, err := w.Twin(ctx, "dev-1"); !errors.Is(err, hubconn.ErrUnsupported) {
		t.Fatalf("twin: %v", err)
	}
	var e *hubconn.Error
	for status, retryable := range map[int]bool{503: true, 429: true, 400: false, 404: false} {
		r.mu.Lock()
		r.status = status
		r.mu.Unlock()
		if err := w.Register(ctx, d, nil); !errors.As(err, &e) || e.Retryable != retryable || e.Status != status {
			t.Fatalf("%d: %v", status, err)
		}
	}
	// Signed with another secret: the receiver refuses it (401, final).
	other, _ := hubconn.NewWebhook("hub.local", r.srv.URL+"/dps", base64.StdEncoding.EncodeToString(make([]byte, 32)), hubconn.Options{Client: r.srv.Client()})
	if err := other.Register(ctx, d, nil); !errors.As(err, &e) || e.Status != 401 || e.Retryable {
		t.Fatalf("wrong secret: %v", err)
	}
	for _, bad := range []struct{ url, secret string }{
		{"http://x/dps", secret}, {r.srv.URL, "c2hvcnQ="}, {r.srv.URL, "not base64"},
	} {
		if _, err := hubconn.NewWebhook("h", bad.url, bad.secret, hubconn.Options{}); err == nil {
			t.Errorf("accepted %q", bad.url)
		}
	}
}

// TestVerify: a tampered body, another secret, a stale or future
// timestamp and malformed headers are refused.
func TestVerify(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"event":"deviceRegistered"}`)
	h := hubconn.Sign(secret, now, body)
	if err := hubconn.Verify(secret, h, body, now.Add(time.Minute), 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		h    string
		body []byte
		at   time.Time
		want error
	}{
		"body":    {h, []byte(`{"event":"deviceRemoved"}`), now, hubconn.ErrBadSignature},
		"secret":  {hubconn.Sign([]byte("another secret, 32 bytes long..."), now, body), body, now, hubconn.ErrBadSignature},
		"stale":   {h, body, now.Add(6 * time.Minute), hubconn.ErrStale},
		"future":  {h, body, now.Add(-6 * time.Minute), hubconn.ErrStale},
		"garbage": {"v1=zz", body, now, hubconn.ErrBadSignature},
		"no mac":  {"t=1800000000", body, now, hubconn.ErrBadSignature},
		"empty":   {"", body, now, hubconn.ErrBadSignature},
	} {
		if err := hubconn.Verify(secret, c.h, c.body, c.at, 5*time.Minute); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
}

// FuzzVerify: Verify never panics and accepts only what Sign made.
func FuzzVerify(f *testing.F) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	f.Add(hubconn.Sign(secret, time.Unix(100, 0), []byte("x")), []byte("x"))
	f.Add("t=1,v1=00,v1=zz", []byte(""))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		if hubconn.Verify(secret, header, body, time.Unix(100, 0), time.Hour) == nil {
			if hubconn.Verify([]byte("another secret"), header, body, time.Unix(100, 0), time.Hour) == nil {
				t.Fatal("verified under two secrets")
			}
		}
	})
}
