package broker_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
	"github.com/tpmdps/dpsd/store"
)

type symDevice struct {
	id  string
	key []byte
}

func enrollSymmetric(t testing.TB, s *dpsdtest.Server, id string) symDevice {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	_, err := s.Store.PutEnrollment(context.Background(), &store.Enrollment{
		RegistrationID: id,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation:        store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(key)}},
			ProvisioningStatus: store.StatusEnabled,
		},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	return symDevice{id: id, key: key}
}

func (d symDevice) username(s *dpsdtest.Server) string {
	return s.IDScope + "/registrations/" + d.id + "/api-version=2019-03-31&ClientVersion=dpsd-test%2F1.0"
}

func (d symDevice) sas(s *dpsdtest.Server) string {
	return attest.SignSAS(d.key, attest.RegistrationResource(s.IDScope, d.id), time.Now().Add(time.Hour), "registration")
}

type message struct {
	topic   string
	payload []byte
}

// pahoProvision provisions d with paho speaking 3.1.1 over brokerURL and
// returns the final poll body.
func pahoProvision(t *testing.T, s *dpsdtest.Server, d symDevice, brokerURL string) map[string]any {
	t.Helper()
	msgs := make(chan message, 16)
	opts := paho.NewClientOptions().
		AddBroker(brokerURL).
		SetClientID(d.id).
		SetUsername(d.username(s)).
		SetPassword(d.sas(s)).
		SetTLSConfig(s.TLSConfig()).
		SetProtocolVersion(4).
		SetCleanSession(false).
		SetKeepAlive(0).
		SetAutoReconnect(false).
		SetConnectTimeout(10 * time.Second)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Subscribe(hooks.ResponseFilter, 1, func(_ paho.Client, m paho.Message) {
		msgs <- message{m.Topic(), m.Payload()}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	next := func() message {
		select {
		case m := <-msgs:
			return m
		case <-time.After(10 * time.Second):
			t.Fatal("no response within 10 s")
		}
		return message{}
	}
	if tok := c.Publish("$dps/registrations/PUT/iotdps-register/?$rid=1", 1, false, `{"registrationId":"`+d.id+`","payload":null}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	m := next()
	if !strings.HasPrefix(m.topic, "$dps/registrations/res/202/?$rid=1&retry-after=") {
		t.Fatalf("register answer %q %s", m.topic, m.payload)
	}
	var op struct {
		OperationID string `json:"operationId"`
	}
	json.Unmarshal(m.payload, &op)
	c.Publish("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId="+op.OperationID, 1, false, "")
	m = next()
	if !strings.HasPrefix(m.topic, "$dps/registrations/res/200/?$rid=2") {
		t.Fatalf("poll answer %q %s", m.topic, m.payload)
	}
	var final map[string]any
	if err := json.Unmarshal(m.payload, &final); err != nil {
		t.Fatal(err)
	}
	return final
}

func TestPahoOverTCPAndTLS(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	for i, u := range []string{"tcp://" + s.TCPAddr, "tls://" + s.TLSAddr} {
		d := enrollSymmetric(t, s, []string{"paho-tcp", "paho-tls"}[i])
		final := pahoProvision(t, s, d, u)
		if final["status"] != "assigned" {
			t.Fatalf("%s: final %v", u, final)
		}
		rs, _ := final["registrationState"].(map[string]any)
		if rs["assignedHub"] != dpsdtest.DefaultHub || rs["registrationId"] != d.id {
			t.Fatalf("%s: registrationState %v", u, rs)
		}
	}
}

// TestWebSocket: paho over wss on "/" (sub-protocol "mqtt"), and a raw
// client on "/$iothub/websocket" asking for "MQTT" in upper case.
func TestWebSocket(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{WebSocket: true})
	d := enrollSymmetric(t, s, "paho-wss")
	if final := pahoProvision(t, s, d, "wss://"+s.WSAddr+"/"); final["status"] != "assigned" {
		t.Fatalf("final %v", final)
	}
	dialer := websocket.Dialer{TLSClientConfig: s.TLSConfig(), Subprotocols: []string{"MQTT"}, HandshakeTimeout: 10 * time.Second}
	ws, resp, err := dialer.Dial("wss://"+s.WSAddr+"/$iothub/websocket", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer ws.Close()
	if got := resp.Header.Get("Sec-Websocket-Protocol"); got != "MQTT" {
		t.Fatalf("negotiated sub-protocol %q", got)
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, mqtttest.Encode(mqtttest.ConnectPacket(d.id, d.username(s), d.sas(s)))); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, msg, err := ws.ReadMessage()
	if err != nil || !bytes.Equal(msg, []byte{0x20, 2, 0, 0}) {
		t.Fatalf("CONNACK %x %v", msg, err)
	}
	// A sub-protocol other than mqtt is refused.
	dialer.Subprotocols = []string{"chat"}
	if _, resp, err := dialer.Dial("wss://"+s.WSAddr+"/", nil); err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("sub-protocol chat: %v %v", err, resp)
	}
}

// TestShutdown: Shutdown closes connected clients and connections that never
// sent CONNECT (no DISCONNECT packet), and stops accepting.
func TestShutdown(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	d := enrollSymmetric(t, s, "sym-shutdown")
	dev, err := net.Dial("tcp", s.TCPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	dev.Write(mqtttest.Encode(mqtttest.ConnectPacket(d.id, d.username(s), d.sas(s))))
	r := bufio.NewReader(dev)
	ack := make([]byte, 4)
	dev.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(r, ack); err != nil || ack[3] != 0 {
		t.Fatalf("CONNACK %x %v", ack, err)
	}
	idle, err := net.Dial("tcp", s.TLSAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Broker.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	for name, c := range map[string]io.Reader{"device": r, "pre-CONNECT": idle} {
		buf := make([]byte, 8)
		n, err := c.Read(buf)
		if err == nil || n != 0 {
			t.Fatalf("%s: read %d bytes %x (%v), want closed without DISCONNECT", name, n, buf[:n], err)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s: still open", name)
		}
	}
	if c, err := net.DialTimeout("tcp", s.TCPAddr, time.Second); err == nil {
		c.Close()
		t.Fatal("still accepting after Shutdown")
	}
}

// TestConnectionRateLimit: new connections beyond the per-address rate are
// closed before the TLS handshake.
func TestConnectionRateLimit(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{Limits: broker.Limits{ConnectionsPerAddressPerMinute: 1, ConnectionBurstPerAddress: 1}})
	first, err := tls.Dial("tcp", s.TLSAddr, s.TLSConfig())
	if err != nil {
		t.Fatalf("first connection: %v", err)
	}
	first.Close()
	if c, err := tls.Dial("tcp", s.TLSAddr, s.TLSConfig()); err == nil {
		c.Close()
		t.Fatal("second connection within the minute completed a TLS handshake")
	}
}

// dpsHook is the constructor of dpsd's hook for svc, as dpsd serve builds it.
func dpsHook(svc hooks.Service, lim hooks.Limits, mx hooks.Metrics) broker.NewHook {
	return func(env broker.HookEnv) (broker.Hook, error) {
		return hooks.New(hooks.Config{Service: svc, Server: env.Server, Limits: lim, Metrics: mx, Refusals: env.Refusals})
	}
}

func TestNewValidates(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	newHook := dpsHook(s.Service, hooks.Limits{}, nil)
	if _, err := broker.New(broker.Config{}, newHook); err == nil {
		t.Error("no listener must be an error")
	}
	if _, err := broker.New(broker.Config{TLSAddr: ":0"}, newHook); err == nil {
		t.Error("TLS without config must be an error")
	}
	if _, err := broker.New(broker.Config{TCPAddr: ":0"}, nil); err == nil {
		t.Error("no hook constructor must be an error")
	}
	hookErr := errors.New("no hook today")
	if _, err := broker.New(broker.Config{TCPAddr: ":0"}, func(broker.HookEnv) (broker.Hook, error) { return nil, hookErr }); !errors.Is(err, hookErr) {
		t.Errorf("a failing hook constructor: %v, want its error", err)
	}
	b, err := broker.New(broker.Config{TCPAddr: s.TCPAddr}, newHook)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err == nil {
		t.Error("binding a busy address must fail")
	}
	if b.Addr(broker.ListenerTCP) != nil {
		t.Error("Addr of a failed listener must be nil")
	}
}

// TestPerAddressCapIPv6Loopback: on a real IPv6 socket (::1, keyed as its
// /64) the per-address cap holds: a second connection is closed before
// anything is read, the first keeps working.
func TestPerAddressCapIPv6Loopback(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	logs := &testkit.LogBuffer{}
	b, err := broker.New(broker.Config{TCPAddr: "[::1]:0", Limits: broker.Limits{ConnectionsPerAddress: 1},
		Logger: slog.New(slog.NewJSONHandler(logs, nil))}, dpsHook(s.Service, hooks.Limits{}, nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatalf("binding [::1]: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b.Shutdown(ctx)
	})
	addr := b.Addr(broker.ListenerTCP).String()
	first, err := net.Dial("tcp6", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := net.Dial("tcp6", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := second.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("second connection from ::1: %v, want closed", err)
	}
	if w := logs.Records(t, "connection refused by a per-address limit"); len(w) != 1 || w[0]["address"] != "::/64" {
		t.Fatalf("warnings %v, want one naming ::/64", w)
	}
	first.SetDeadline(time.Now().Add(10 * time.Second))
	pkt := mqtttest.Encode(mqtttest.ConnectPacket("v6-device", dpsdtest.DefaultIDScope+"/registrations/v6-device/api-version=2019-03-31", ""))
	if _, err := first.Write(pkt); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(first, ack); err != nil || ack[3] != 0 {
		t.Fatalf("first connection CONNACK %x %v", ack, err)
	}
}

// isReset reports a connection reset (a close with unread data may show as one).
func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}
