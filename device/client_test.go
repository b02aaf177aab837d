package device

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/internal/testkit"
)

func TestProvisionSymmetricKeyPolls(t *testing.T) {
	b := startScripted(t, nil, func(r scriptReq) scriptResp {
		switch r.N {
		case 1:
			return scriptResp{Status: 202, RetryAfter: "0", Body: `{"operationId":"op-1","status":"assigning"}`}
		case 2:
			return scriptResp{Status: 202, RetryAfter: "3", Body: `{"operationId":"op-1","status":"assigning","registrationState":{"registrationId":"dev-1","status":"assigning"}}`}
		case 3:
			return scriptResp{Status: 202, Body: `{"operationId":"op-1","status":"assigning"}`}
		default:
			return scriptResp{Status: 200, Body: assignedBody}
		}
	})
	sl := &sleepRecorder{}
	cfg := b.config(t)
	cfg.Sleep = sl.sleep
	cfg.Payload = json.RawMessage(`{"model":"m1"}`)
	var phases []Phase
	cfg.OnPhase = func(p Phase) { phases = append(phases, p) }
	now := time.Unix(1_800_000_000, 0)
	cfg.Now = func() time.Time { return now }

	res, err := Provision(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != StatusAssigned || res.AssignedHub != "hub1.example" || res.DeviceID != "dev-1" ||
		res.Substatus != "initialAssignment" || res.OperationID != "op-1" || string(res.Payload) != `{"x":1}` ||
		res.State.ETag != "e1" || res.RegistrationID != "dev-1" {
		t.Fatalf("result %+v", res)
	}
	if !json.Valid(res.RegistrationState) || !strings.Contains(string(res.RegistrationState), `"etag":"e1"`) {
		t.Fatalf("raw registrationState %s", res.RegistrationState)
	}
	// retry-after 0 = now, 3 = 3 s, absent = PollInterval.
	want := []time.Duration{0, 3 * time.Second, DefaultPollInterval}
	if got := sl.all(); len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("waits %v, want %v", got, want)
	}
	if got := strings.Join(phasesToStrings(phases), ","); got != "connect,register,poll" {
		t.Fatalf("phases %s", got)
	}

	reqs := b.requests()
	if len(reqs) != 4 || reqs[0].Kind != "register" || reqs[1].Kind != "poll" || reqs[1].OperationID != "op-1" {
		t.Fatalf("requests %+v", reqs)
	}
	// Distinct $rid per request on one connection.
	seen := map[string]bool{}
	for _, r := range reqs {
		if seen[r.RID] {
			t.Fatalf("$rid %q reused", r.RID)
		}
		seen[r.RID] = true
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(reqs[0].Body, &body); err != nil {
		t.Fatal(err)
	}
	if string(body["registrationId"]) != `"dev-1"` || string(body["payload"]) != `{"model":"m1"}` {
		t.Fatalf("register body %s", reqs[0].Body)
	}
	r := reqs[0]
	if r.ClientID != "dev-1" {
		t.Fatalf("client id %q", r.ClientID)
	}
	wantUser := "0ne00000001/registrations/dev-1/api-version=2019-03-31&ClientVersion=" + url.QueryEscape("dpsd-device/"+Version)
	if r.Username != wantUser {
		t.Fatalf("username %q, want %q", r.Username, wantUser)
	}
	u, err := attest.ParseUsername(r.Username)
	if err != nil || u.RegistrationID != "dev-1" || u.ClientVersion != "dpsd-device/"+Version {
		t.Fatalf("ParseUsername: %+v %v", u, err)
	}
	tok, err := attest.ParseSASToken(r.Password)
	if err != nil {
		t.Fatalf("password is not a SAS token: %v", err)
	}
	if err := tok.Verify([]byte("0123456789abcdef0123456789abcdef"), "0ne00000001/registrations/dev-1", now, attest.SASPolicy{}); err != nil {
		t.Fatalf("SAS does not verify: %v", err)
	}
	if tok.KeyName != "registration" || !tok.Expiry.Equal(now.Add(time.Hour)) {
		t.Fatalf("token %+v", tok)
	}
	testkit.Await(t, "clean disconnect", func() bool { return b.disconnects() == 1 })
}

func phasesToStrings(ps []Phase) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = string(p)
	}
	return out
}

func TestProvisionRetriesThrottlingAndServerErrors(t *testing.T) {
	b := startScripted(t, nil, func(r scriptReq) scriptResp {
		switch r.N {
		case 1:
			return scriptResp{Status: 429, RetryAfter: "5", Body: `{"errorCode":429001,"message":"throttled"}`}
		case 2:
			return scriptResp{Status: 503, Body: `{"errorCode":503000}`}
		case 3:
			return scriptResp{Status: 202, RetryAfter: "0", Body: `{"operationId":"op-9","status":"assigning"}`}
		case 4:
			return scriptResp{Status: 500, Body: `{}`}
		default:
			return scriptResp{Status: 200, Body: assignedBody}
		}
	})
	sl := &sleepRecorder{}
	cfg := b.config(t)
	cfg.Sleep = sl.sleep
	cfg.Backoff = Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Rand: func() float64 { return 0 }}
	res, err := Provision(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.AssignedHub != "hub1.example" {
		t.Fatalf("result %+v", res)
	}
	reqs := b.requests()
	kinds := []string{}
	for _, r := range reqs {
		kinds = append(kinds, r.Kind)
	}
	if got := strings.Join(kinds, ","); got != "register,register,register,poll,poll" {
		t.Fatalf("requests %s", got)
	}
	if reqs[4].OperationID != "op-9" {
		t.Fatalf("poll operationId %q", reqs[4].OperationID)
	}
	// 429 with retry-after 5 s: at least 5 s. 503: backoff retry 1 = 100ms..200ms -> 100ms at r=0.
	// 202 retry-after 0: 0. 500 on the first poll retry: 50ms.
	want := []time.Duration{5 * time.Second, 100 * time.Millisecond, 0, 50 * time.Millisecond}
	got := sl.all()
	if len(got) != len(want) {
		t.Fatalf("waits %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("waits %v, want %v", got, want)
		}
	}
}

func TestProvisionRetriesAreBounded(t *testing.T) {
	b := startScripted(t, nil, func(r scriptReq) scriptResp {
		return scriptResp{Status: 503, RetryAfter: "1", Body: `{"errorCode":503001,"trackingId":"trk"}`}
	})
	cfg := b.config(t)
	cfg.Sleep = (&sleepRecorder{}).sleep
	cfg.Backoff = Backoff{MaxAttempts: 3}
	_, err := Provision(context.Background(), cfg)
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrRetriesExhausted) || e.Status != 503 || e.ErrorCode != 503001 ||
		e.TrackingID != "trk" || e.Phase != PhaseRegister || e.Refused() {
		t.Fatalf("err = %#v", err)
	}
	if n := len(b.requests()); n != 3 {
		t.Fatalf("broker saw %d requests, want 3", n)
	}
}

func TestProvisionPermanentAnswers(t *testing.T) {
	for _, status := range []int{300, 400, 401, 404, 412, 428} {
		b := startScripted(t, nil, func(r scriptReq) scriptResp {
			return scriptResp{Status: status, RetryAfter: "1", Body: `{"errorCode":` + strconv.Itoa(status*1000+4) + `,"trackingId":"t","message":"nope"}`}
		})
		cfg := b.config(t)
		cfg.Sleep = (&sleepRecorder{}).sleep
		res, err := Provision(context.Background(), cfg)
		var e *Error
		if res != nil || !errors.As(err, &e) || e.Status != status || e.ErrorCode != status*1000+4 || e.Message != "nope" ||
			!e.Refused() || e.Phase != PhaseRegister {
			t.Fatalf("status %d: res %v err %#v", status, res, err)
		}
		if n := len(b.requests()); n != 1 {
			t.Fatalf("status %d: %d requests, want 1 (no retry)", status, n)
		}
	}
}

func itoa(n int) string {
	return strings.TrimSpace(strings.Repeat(" ", 0) + json.Number(jsonInt(n)).String())
}

func jsonInt(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestProvisionNotAssigned(t *testing.T) {
	for _, st := range []string{StatusFailed, StatusDisabled} {
		b := startScripted(t, nil, func(r scriptReq) scriptResp {
			return scriptResp{Status: 200, Body: `{"operationId":"o","status":"` + st + `","registrationState":{"registrationId":"dev-1","status":"` + st + `","errorCode":400209,"errorMessage":"custom allocation failed"}}`}
		})
		res, err := Provision(context.Background(), b.config(t))
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, ErrNotAssigned) || !e.Refused() || e.ErrorCode != 400209 ||
			!strings.Contains(e.Error(), "custom allocation failed") {
			t.Fatalf("%s: err = %v", st, err)
		}
		if res == nil || res.Status != st || res.State.ErrorCode != 400209 {
			t.Fatalf("%s: result %+v", st, res)
		}
	}
}

func TestProvisionConnectRefused(t *testing.T) {
	b := startScripted(t, func(user, pass string) bool { return false }, func(r scriptReq) scriptResp {
		t.Errorf("request from a refused client")
		return scriptResp{}
	})
	_, err := Provision(context.Background(), b.config(t))
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrConnectRefused) || e.Phase != PhaseConnect || !e.Refused() {
		t.Fatalf("err = %v", err)
	}
}

func TestProvisionIgnoresOtherRIDs(t *testing.T) {
	b := startScripted(t, nil, func(r scriptReq) scriptResp {
		if r.N == 1 {
			// An answer for some other request: must be ignored; then silence.
			return scriptResp{Status: 400, RID: "other-" + r.RID, Body: `{}`}
		}
		return scriptResp{}
	})
	cfg := b.config(t)
	// The client's log says when it has read the stray answer and set it
	// aside; only then is the request cancelled.
	ignored := make(chan struct{})
	var once sync.Once
	cfg.Logger = slog.New(onMessage{Handler: cfg.Logger.Handler(), msg: "ignoring response for another request",
		fn: func() { once.Do(func() { close(ignored) }) }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		defer cancel()
		select {
		case <-ignored:
		case <-ctx.Done(): // Provision returned first: the assertions below say why
		case <-time.After(testkit.DefaultWait):
			t.Error("the stray answer never reached the client")
		}
	}()
	_, err := Provision(ctx, cfg)
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, context.Canceled) || e.Status != 0 {
		t.Fatalf("err = %v; a stray answer must not be taken for ours", err)
	}
	testkit.Await(t, "disconnect after cancel", func() bool { return b.disconnects() == 1 })
}

func TestProvisionTimeout(t *testing.T) {
	b := startScripted(t, nil, func(r scriptReq) scriptResp { return scriptResp{} })
	cfg := b.config(t)
	cfg.Timeout = 300 * time.Millisecond
	_, err := Provision(context.Background(), cfg)
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, context.DeadlineExceeded) || e.Phase != PhaseRegister || e.Refused() {
		t.Fatalf("err = %v", err)
	}
}

func TestProvisionConnectFailure(t *testing.T) {
	cfg := Config{Host: "127.0.0.1", Port: 1, Transport: TransportTCP, IDScope: "s", RegistrationID: "d",
		Attestation: &SymmetricKey{Key: []byte("k")}, Timeout: 5 * time.Second}
	_, err := Provision(context.Background(), cfg)
	var e *Error
	if !errors.As(err, &e) || e.Phase != PhaseConnect || e.Refused() || errors.Is(err, ErrConnectRefused) {
		t.Fatalf("err = %v", err)
	}
}

func TestProvisionInvalidConfig(t *testing.T) {
	good := Config{Host: "h", IDScope: "s", RegistrationID: "d", Attestation: &SymmetricKey{Key: []byte("k")}}
	for name, mut := range map[string]func(*Config){
		"no host":       func(c *Config) { c.Host = "" },
		"no scope":      func(c *Config) { c.IDScope = "" },
		"no att":        func(c *Config) { c.Attestation = nil },
		"bad payload":   func(c *Config) { c.Payload = json.RawMessage(`{`) },
		"bad port":      func(c *Config) { c.Port = 70000 },
		"bad regid":     func(c *Config) { c.RegistrationID = "-bad!" },
		"no regid":      func(c *Config) { c.RegistrationID = "" },
		"ca file":       func(c *Config) { c.CAFile = "/nonexistent.pem" },
		"bad transport": func(c *Config) { c.Transport = 9 },
	} {
		c := good
		mut(&c)
		if _, err := Provision(context.Background(), c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: err = %v, want ErrInvalidConfig", name, err)
		}
	}
}

func TestProvisionRetriesServerUnavailable(t *testing.T) {
	b := startScripted(t, nil, func(r scriptReq) scriptResp { return scriptResp{Status: 200, Body: assignedBody} })
	b.setUnavailable(2)
	sl := &sleepRecorder{}
	cfg := b.config(t)
	cfg.Sleep = sl.sleep
	cfg.Backoff = Backoff{Initial: time.Second, Rand: func() float64 { return 0 }}
	res, err := Provision(context.Background(), cfg)
	if err != nil || res.AssignedHub != "hub1.example" {
		t.Fatalf("res %+v err %v", res, err)
	}
	if got := b.connects(); got != 3 {
		t.Fatalf("%d CONNECTs, want 3", got)
	}
	if got := sl.all(); len(got) != 2 || got[0] != 500*time.Millisecond || got[1] != time.Second {
		t.Fatalf("waits %v", got)
	}

	// Bounded: always unavailable gives a non-refusal error after MaxAttempts.
	b.setUnavailable(1000)
	cfg.Backoff.MaxAttempts = 3
	_, err = Provision(context.Background(), cfg)
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrServerUnavailable) || !errors.Is(err, ErrRetriesExhausted) || e.Refused() {
		t.Fatalf("err = %v", err)
	}
	if got := b.connects(); got != 6 {
		t.Fatalf("%d CONNECTs in all, want 6", got)
	}
}

// onMessage is a slog.Handler that passes every record on and calls fn
// for each one whose message is msg: a test's signal that the code under
// test reached a point it reports only in its log.
type onMessage struct {
	slog.Handler
	msg string
	fn  func()
}

// Handle calls fn for msg, then passes r on.
func (h onMessage) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.fn()
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs keeps watching for msg.
func (h onMessage) WithAttrs(as []slog.Attr) slog.Handler {
	return onMessage{Handler: h.Handler.WithAttrs(as), msg: h.msg, fn: h.fn}
}

// WithGroup keeps watching for msg.
func (h onMessage) WithGroup(name string) slog.Handler {
	return onMessage{Handler: h.Handler.WithGroup(name), msg: h.msg, fn: h.fn}
}
