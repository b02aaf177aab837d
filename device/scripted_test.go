package device

// A real MQTT broker (mochi) on a loopback socket whose DPS answers are
// scripted by each test, to drive the client through answers the real
// service gives only under load or faults (429, 5xx, stale $rid, silence).
// End-to-end tests against the real service are in e2e_test.go.

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// scriptReq is one request the device published.
type scriptReq struct {
	N           int // 1-based count of requests so far
	ClientID    string
	Username    string
	Password    string
	Kind        string // "register" or "poll"
	RID         string
	OperationID string
	Body        []byte
}

// scriptResp is the answer to send; Status 0 means do not answer.
type scriptResp struct {
	Status     int
	RetryAfter string // "" for none
	RID        string // overrides the request's $rid when set
	Body       string
}

type scriptedBroker struct {
	Addr string

	mu       sync.Mutex
	reqs     []scriptReq
	conns    []string          // username of every accepted or refused CONNECT
	pass     map[string]string // last CONNECT password by client id
	disconns int
	allow    func(user, pass string) bool
	// unavailable is how many CONNECTs still get "server unavailable".
	unavailable int
}

type scriptHook struct {
	mochi.HookBase
	b   *scriptedBroker
	srv *mochi.Server
}

func (h *scriptHook) ID() string { return "script" }
func (h *scriptHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck || b == mochi.OnDisconnect || b == mochi.OnConnect
}

// OnConnect answers CONNACK "server unavailable" to the first b.unavailable connections.
func (h *scriptHook) OnConnect(cl *mochi.Client, pk packets.Packet) error {
	h.b.mu.Lock()
	refuse := h.b.unavailable > 0
	if refuse {
		h.b.unavailable--
		h.b.conns = append(h.b.conns, string(pk.Connect.Username))
	}
	h.b.mu.Unlock()
	if refuse {
		_ = h.srv.SendConnack(cl, packets.ErrServerUnavailable, false, nil)
		return packets.ErrServerUnavailable
	}
	return nil
}
func (h *scriptHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	h.b.conns = append(h.b.conns, string(pk.Connect.Username))
	h.b.pass[cl.ID] = string(pk.Connect.Password)
	return h.b.allow == nil || h.b.allow(string(pk.Connect.Username), string(pk.Connect.Password))
}
func (h *scriptHook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool { return true }
func (h *scriptHook) OnDisconnect(cl *mochi.Client, err error, expire bool) {
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	h.b.disconns++
}

// startScripted runs a broker that answers each device request with script.
func startScripted(t *testing.T, allow func(user, pass string) bool, script func(r scriptReq) scriptResp) *scriptedBroker {
	t.Helper()
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	b := &scriptedBroker{allow: allow, pass: map[string]string{}}
	if err := srv.AddHook(&scriptHook{b: b, srv: srv}, nil); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.Addr = l.Addr().String()
	l.Close()
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "t", Address: b.Addr})); err != nil {
		t.Fatal(err)
	}
	handle := func(kind string) mochi.InlineSubFn {
		return func(cl *mochi.Client, _ packets.Subscription, pk packets.Packet) {
			q := pk.TopicName[strings.Index(pk.TopicName, "?")+1:]
			r := scriptReq{Kind: kind, ClientID: pk.Origin, Body: bytes.Clone(pk.Payload)}
			for f := range strings.SplitSeq(q, "&") {
				k, v, _ := strings.Cut(f, "=")
				switch k {
				case "$rid":
					r.RID = v
				case "operationId":
					r.OperationID = v
				}
			}
			if c, ok := srv.Clients.Get(pk.Origin); ok {
				r.Username = string(c.Properties.Username)
			}
			b.mu.Lock()
			r.Password = b.pass[pk.Origin]
			r.N = len(b.reqs) + 1
			b.reqs = append(b.reqs, r)
			b.mu.Unlock()
			resp := script(r)
			if resp.Status == 0 {
				return
			}
			rid := r.RID
			if resp.RID != "" {
				rid = resp.RID
			}
			topic := "$dps/registrations/res/" + strconv.Itoa(resp.Status) + "/?$rid=" + rid
			if resp.RetryAfter != "" {
				topic += "&retry-after=" + resp.RetryAfter
			}
			go func() { _ = srv.Publish(topic, []byte(resp.Body), false, 1) }()
		}
	}
	if err := srv.Subscribe("$dps/registrations/PUT/#", 1, handle("register")); err != nil {
		t.Fatal(err)
	}
	if err := srv.Subscribe("$dps/registrations/GET/#", 2, handle("poll")); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return b
}

func (b *scriptedBroker) requests() []scriptReq {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]scriptReq(nil), b.reqs...)
}

func (b *scriptedBroker) setUnavailable(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unavailable = n
}

func (b *scriptedBroker) connects() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

func (b *scriptedBroker) disconnects() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.disconns
}

func (b *scriptedBroker) config(t *testing.T) Config {
	host, port, _ := net.SplitHostPort(b.Addr)
	p, _ := strconv.Atoi(port)
	return Config{
		Host: host, Port: p, Transport: TransportTCP,
		IDScope: "0ne00000001", RegistrationID: "dev-1",
		Attestation: &SymmetricKey{Key: []byte("0123456789abcdef0123456789abcdef")},
		Timeout:     20 * time.Second,
		Logger:      slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// sleepRecorder replaces Config.Sleep: it records the waits and returns at once.
type sleepRecorder struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (s *sleepRecorder) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.waits = append(s.waits, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleepRecorder) all() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.waits...)
}

const assignedBody = `{"operationId":"op-1","status":"assigned","registrationState":{"registrationId":"dev-1",` +
	`"createdDateTimeUtc":"2026-01-01T00:00:00Z","assignedHub":"hub1.example","deviceId":"dev-1","status":"assigned",` +
	`"substatus":"initialAssignment","lastUpdatedDateTimeUtc":"2026-01-01T00:00:00Z","etag":"e1","payload":{"x":1}}}`
