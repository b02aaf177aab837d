package hooks_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
	"github.com/tpmdps/dpsd/store"
)

const apiVersion = "2019-03-31"

// symDevice is a symmetric key enrollment.
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

func username(s *dpsdtest.Server, id string) string {
	return s.IDScope + "/registrations/" + id + "/api-version=" + apiVersion
}

func (d symDevice) sas(s *dpsdtest.Server, expiry time.Time) string {
	return attest.SignSAS(d.key, attest.RegistrationResource(s.IDScope, d.id), expiry, "registration")
}

// sasAt is a token valid for an hour.
func (d symDevice) sasAt(s *dpsdtest.Server) string { return d.sas(s, time.Now().Add(time.Hour)) }

// connectSym connects a raw client with the device's SAS and checks CONNACK.
func connectSym(t *testing.T, s *dpsdtest.Server, d symDevice, clean bool) *mqtttest.Conn {
	t.Helper()
	c := mqtttest.Dial(t, s.TCPAddr)
	code, present := c.Connect(d.id, username(s, d.id), d.sas(s, time.Now().Add(time.Hour)), clean, 0)
	if code != 0 || present {
		t.Fatalf("CONNACK code %d present %v, want 0 false", code, present)
	}
	return c
}

const (
	registerTopic = "$dps/registrations/PUT/iotdps-register/?$rid="
	pollTopic     = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid="
)

type opStatus struct {
	OperationID       string `json:"operationId"`
	Status            string `json:"status"`
	RegistrationState *struct {
		RegistrationID string `json:"registrationId"`
		AssignedHub    string `json:"assignedHub"`
		DeviceID       string `json:"deviceId"`
		Status         string `json:"status"`
	} `json:"registrationState"`
	ErrorCode int `json:"errorCode"`
}

func decode(t *testing.T, body []byte) opStatus {
	t.Helper()
	var o opStatus
	if err := json.Unmarshal(body, &o); err != nil {
		t.Fatalf("response body %q: %v", body, err)
	}
	return o
}

// TestSymmetricKeyOrderingAndQoS runs a symmetric key device with
// CleanSession=0 and keep-alive 0 over a raw client: PUBACK precedes the
// response, the UUID $rid is echoed, QoS follows the subscription, and a
// poll with $rid=1 answers 200 assigned.
func TestSymmetricKeyOrderingAndQoS(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	d := enrollSymmetric(t, s, "sym-device-1")
	c := connectSym(t, s, d, false)
	if codes := c.Subscribe(1, hooks.ResponseFilter); len(codes) != 1 || codes[0] != 1 {
		t.Fatalf("SUBACK %x, want granted QoS 1", codes)
	}
	rid := "0f8fad5b-d9cb-469f-a165-70867728950e"
	id := c.Publish(registerTopic+rid, 1, nil) // C#: empty body
	p := c.Read()
	if p.Type() != packets.Puback || p.PacketID != id {
		t.Fatalf("first packet after a QoS 1 request must be its PUBACK, got %v", p)
	}
	p = c.Read()
	topic, qos, pid, body := p.TopicName, p.FixedHeader.Qos, p.PacketID, p.Payload
	if p.Type() != packets.Publish || qos != 1 || pid == 0 {
		t.Fatalf("response %v qos %d", p, qos)
	}
	c.Puback(pid)
	if !strings.HasPrefix(topic, "$dps/registrations/res/202/?$rid="+rid+"&retry-after=") {
		t.Fatalf("response topic %q", topic)
	}
	op := decode(t, body)
	if op.OperationID == "" || op.Status != "assigning" {
		t.Fatalf("202 body %s", body)
	}
	c.Publish(pollTopic+"1&operationId="+op.OperationID, 0, []byte(" "))
	topic, body = c.ReadResponse()
	if !strings.HasPrefix(topic, "$dps/registrations/res/200/?$rid=1") {
		t.Fatalf("poll topic %q body %s", topic, body)
	}
	op = decode(t, body)
	if op.Status != "assigned" || op.RegistrationState == nil || op.RegistrationState.AssignedHub != dpsdtest.DefaultHub {
		t.Fatalf("poll body %s", body)
	}
	for _, b := range body {
		if b >= 0x80 {
			t.Fatalf("non-ASCII byte in body %q", body)
		}
	}
	c.Unsubscribe(hooks.ResponseFilter)
}

// TestPipelinedRequestsAnsweredInOrder sends several QoS 0 requests, all with
// $rid=1 and a Python-style null payload, without waiting: each is answered
// exactly once, in order.
func TestPipelinedRequestsAnsweredInOrder(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	d := enrollSymmetric(t, s, "sym-pipeline")
	c := connectSym(t, s, d, true)
	c.Subscribe(0, hooks.ResponseFilter)
	c.Publish(registerTopic+"1", 0, []byte(`{"registrationId":"sym-pipeline","payload":null}`))
	c.Publish(pollTopic+"1&operationId=no-such-op", 0, nil)
	c.Publish(registerTopic+"1", 0, []byte(`{"registrationId":"another-id"}`))
	c.Publish(registerTopic+"2", 0, []byte(`not json`))
	want := []string{"/202/?$rid=1", "/404/?$rid=1", "/400/?$rid=1", "/400/?$rid=2"}
	for i, w := range want {
		p := c.Read()
		topic, qos, body := p.TopicName, p.FixedHeader.Qos, p.Payload
		if p.Type() != packets.Publish || qos != 0 || !strings.Contains(topic, w) {
			t.Fatalf("answer %d: %q (qos %d) %s, want %s", i, topic, qos, body, w)
		}
	}
	c.Ping() // nothing else arrived before the PINGRESP
}

// TestConnectRefusals: unknown id, wrong key, expired token, a token for
// another id and a username naming another scope all get CONNACK 5.
func TestConnectRefusals(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	d := enrollSymmetric(t, s, "sym-refuse")
	other := enrollSymmetric(t, s, "sym-other")
	future := time.Now().Add(time.Hour)
	wrong := symDevice{id: d.id, key: make([]byte, 32)}
	cases := []struct {
		name, client, user, pass string
	}{
		{"unknown id", "nobody", username(s, "nobody"), symDevice{"nobody", d.key}.sas(s, future)},
		{"wrong key", d.id, username(s, d.id), wrong.sas(s, future)},
		{"expired", d.id, username(s, d.id), d.sas(s, time.Now().Add(-time.Hour))},
		{"token for another id", d.id, username(s, d.id), other.sas(s, future)},
		{"other scope", d.id, "0ne99999999/registrations/" + d.id + "/api-version=" + apiVersion, d.sas(s, future)},
		{"client id differs", other.id, username(s, d.id), d.sas(s, future)},
		{"garbage password", d.id, username(s, d.id), "SharedAccessSignature sr=x"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := mqtttest.Dial(t, s.TCPAddr)
			if code, _ := c.Connect(tc.client, tc.user, tc.pass, true, 30); code != 5 {
				t.Fatalf("CONNACK %d, want 5", code)
			}
			c.ExpectClosed()
		})
	}
}

// TestACL: only filters within the response topics may be subscribed
// (others get 0x80) and a publish to any other topic, even QoS 0, closes
// the connection without a DISCONNECT packet.
func TestACL(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	d := enrollSymmetric(t, s, "sym-acl")
	c := connectSym(t, s, d, true)
	codes := c.Subscribe(1, "#", hooks.ResponseFilter, "$dps/registrations/res/200/#", "devices/x/messages/devicebound/#",
		"$dps/#", "$dps/registrations/+/200/#", "$share/g/$dps/registrations/res/#")
	if string(codes) != string([]byte{0x80, 1, 1, 0x80, 0x80, 0x80, 0x80}) {
		t.Fatalf("SUBACK %x", codes)
	}
	for _, topic := range []string{"devices/sym-acl/messages/events/", "$dps/registrations/res/200/?$rid=1", "a/#", registerTopic + "1&$rid=2"} {
		t.Run(topic, func(t *testing.T) {
			c := connectSym(t, s, d, true)
			c.Publish(topic, 0, []byte("x"))
			c.ExpectClosed()
		})
	}
	t.Run("qos1", func(t *testing.T) {
		c := connectSym(t, s, d, true)
		c.Publish("other/topic", 1, []byte("x"))
		c.ExpectClosed()
	})
	t.Run("qos2", func(t *testing.T) {
		c := connectSym(t, s, d, true)
		c.Publish(registerTopic+"1", 2, nil)
		c.ExpectClosed()
	})
}

// TestExactResponseTopicSubscription is what mosquitto_rr does: it
// subscribes to the exact response topic it expects (here at QoS 1), then
// publishes the request; the answer comes on the same connection, at the
// QoS of that subscription, whatever its status and retry-after.
func TestExactResponseTopicSubscription(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	d := enrollSymmetric(t, s, "sym-rr")
	c := connectSym(t, s, d, true)
	if codes := c.Subscribe(1, "$dps/registrations/res/202/?$rid=7"); string(codes) != string([]byte{1}) {
		t.Fatalf("SUBACK %x", codes)
	}
	c.Publish(registerTopic+"7", 0, []byte(`{"registrationId":"sym-rr"}`))
	p := c.Read()
	topic, qos, body := p.TopicName, p.FixedHeader.Qos, p.Payload
	if p.Type() != packets.Publish || !strings.HasPrefix(topic, "$dps/registrations/res/202/?$rid=7") || qos != 1 || decode(t, body).OperationID == "" {
		t.Fatalf("answer %q at QoS %d: %s", topic, qos, body)
	}
}

// TestNoEavesdropping: a restricted client subscribed to the response filter
// (and trying "#") sees nothing of another device's provisioning.
func TestNoEavesdropping(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	d := enrollSymmetric(t, s, "sym-victim")
	eve := mqtttest.Dial(t, s.TCPAddr)
	if code, _ := eve.Connect("eve", username(s, "eve"), "", true, 0); code != 0 {
		t.Fatalf("restricted CONNACK %d", code)
	}
	if codes := eve.Subscribe(1, hooks.ResponseFilter, "#", "$dps/#"); string(codes) != string([]byte{1, 0x80, 0x80}) {
		t.Fatalf("eve SUBACK %x", codes)
	}
	// The victim is connected with the same filter; eve also uses the victim's
	// id as client id on a second restricted connection.
	eve2 := mqtttest.Dial(t, s.TCPAddr)
	if code, _ := eve2.Connect(d.id, username(s, d.id), "", true, 0); code != 0 {
		t.Fatalf("restricted CONNACK %d", code)
	}
	eve2.Subscribe(1, hooks.ResponseFilter)

	c := connectSym(t, s, d, true)
	c.Subscribe(1, hooks.ResponseFilter)
	c.Publish(registerTopic+"1", 1, nil)
	c.Read() // PUBACK
	_, body := c.ReadResponse()
	op := decode(t, body)
	c.Publish(pollTopic+"2&operationId="+op.OperationID, 1, nil)
	c.Read()
	if _, body = c.ReadResponse(); decode(t, body).Status != "assigned" {
		t.Fatalf("victim not assigned: %s", body)
	}
	// eve's own request is answered, and it is the first thing eve receives.
	for _, e := range []*mqtttest.Conn{eve, eve2} {
		e.Ping()
		e.Publish(registerTopic+"eve", 0, []byte(`{}`))
		topic, _ := e.ReadResponse()
		if !strings.Contains(topic, "?$rid=eve") {
			t.Fatalf("eavesdropper received %q", topic)
		}
	}
}

// TestTakeover: a second authenticated connection with the same id replaces
// the first (closed without DISCONNECT); a restricted one never displaces an
// authenticated one; SessionPresent stays 0 even with CleanSession=0.
func TestTakeover(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	d := enrollSymmetric(t, s, "sym-takeover")
	first := connectSym(t, s, d, false)
	first.Subscribe(1, hooks.ResponseFilter)

	r := mqtttest.Dial(t, s.TCPAddr)
	if code, _ := r.Connect(d.id, username(s, d.id), "", true, 0); code != 0 {
		t.Fatalf("restricted CONNACK %d", code)
	}
	first.Ping() // still connected

	second := connectSym(t, s, d, false) // asserts SessionPresent=0
	first.ExpectClosed()
	second.Subscribe(1, hooks.ResponseFilter)
	second.Publish(registerTopic+"9", 1, nil)
	if p := second.Read(); p.Type() != packets.Puback {
		t.Fatalf("want PUBACK, got %v", p)
	}
	if topic, _ := second.ReadResponse(); !strings.Contains(topic, "/202/?$rid=9") {
		t.Fatalf("topic %q", topic)
	}
}

// TestRestrictedLimits: per-connection challenge cap (then closed), the
// per-address rate (429 429001 with retry-after), the idle timeout and the
// total restricted session cap (CONNACK 3).
func TestRestrictedLimits(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{HookLimits: hooks.Limits{
		ChallengesPerConnection:       2,
		ChallengesPerAddressPerMinute: 1,
		ChallengeBurstPerAddress:      3,
		RestrictedSessions:            2,
	}})
	restricted := func(id string) *mqtttest.Conn {
		c := mqtttest.Dial(t, s.TCPAddr)
		if code, _ := c.Connect(id, username(s, id), "", true, 0); code != 0 {
			t.Fatalf("restricted CONNACK %d", code)
		}
		c.Subscribe(1, hooks.ResponseFilter)
		return c
	}
	ek := `{"tpm":{"endorsementKey":"AAAA","storageRootKey":"AAAA"}}`
	a := restricted("tpm-a")
	for i := 0; i < 2; i++ {
		a.Publish(registerTopic+fmt.Sprint(i), 0, []byte(ek))
		topic, body := a.ReadResponse()
		if strings.Contains(topic, "/429/") || strings.Contains(topic, "/200/") || strings.Contains(topic, "/202/") {
			t.Fatalf("challenge %d: %q %s", i, topic, body)
		}
	}
	a.Publish(registerTopic+"3", 0, []byte(ek))
	a.ExpectClosed() // third challenge on one connection

	b := restricted("tpm-b")
	b.Publish(registerTopic+"x", 0, []byte(ek)) // third token of the address burst
	b.ReadResponse()
	b.Publish(registerTopic+"y", 0, []byte(ek))
	topic, body := b.ReadResponse()
	if !strings.HasPrefix(topic, "$dps/registrations/res/429/?$rid=y&retry-after=") {
		t.Fatalf("want 429 with retry-after, got %q %s", topic, body)
	}
	var eb struct {
		ErrorCode  int    `json:"errorCode"`
		TrackingID string `json:"trackingId"`
	}
	json.Unmarshal(body, &eb)
	if eb.ErrorCode != 429001 || eb.TrackingID == "" {
		t.Fatalf("429 body %s", body)
	}

	testkit.Await(t, "a's session released", func() bool { _, r := s.Broker.Sessions(); return r == 1 })
	c := restricted("tpm-c") // b and c: the cap of 2
	over := mqtttest.Dial(t, s.TCPAddr)
	if code, _ := over.Connect("tpm-d", username(s, "tpm-d"), "", true, 0); code != 3 {
		t.Fatalf("restricted session over the cap: CONNACK %d, want 3", code)
	}
	over.ExpectClosed()
	c.Ping()
}

// TestRestrictedIdle: an idle restricted session is closed (pings do not
// count); an authenticated one is not.
func TestRestrictedIdle(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{HookLimits: hooks.Limits{
		RestrictedIdleTimeout: 200 * time.Millisecond,
	}})
	d := enrollSymmetric(t, s, "sym-idle")
	auth := connectSym(t, s, d, true)
	c := mqtttest.Dial(t, s.TCPAddr)
	if code, _ := c.Connect("tpm-idle", username(s, "tpm-idle"), "", true, 0); code != 0 {
		t.Fatalf("restricted CONNACK %d", code)
	}
	c.Ping()
	c.ExpectClosed()
	auth.Ping()
}

// TestConnectDeadline: a connection that never sends CONNECT is closed.
func TestConnectDeadline(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{ConnectTimeout: 200 * time.Millisecond})
	c := mqtttest.Dial(t, s.TCPAddr)
	c.ExpectClosed()
	c2 := mqtttest.Dial(t, s.TLSAddr) // no TLS handshake either
	c2.ExpectClosed()

	// Once CONNECT is in, the deadline is gone (keep-alive 0: no deadline at
	// all). Proving an absence takes a deadline passing: connections
	// accepted after c3's CONNECT, which send nothing, are closed by theirs,
	// which ends later than c3's would have; two in a row leave a margin of
	// a whole deadline. c3 is still open after them.
	d := enrollSymmetric(t, s, "sym-deadline")
	c3 := connectSym(t, s, d, true)
	for range 2 {
		mqtttest.Dial(t, s.TCPAddr).ExpectClosed()
	}
	c3.Ping()
}

// TestPerAddressConnectionCap: connections beyond the per-address cap are
// closed before anything is read.
func TestPerAddressConnectionCap(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{Limits: broker.Limits{ConnectionsPerAddress: 2}})
	d := enrollSymmetric(t, s, "sym-cap")
	a := connectSym(t, s, d, true)
	b := mqtttest.Dial(t, s.TCPAddr)
	c := mqtttest.Dial(t, s.TCPAddr)
	c.ExpectClosed()
	b.Close()
	a.Ping()
	// once b is gone a new connection is admitted (the release is asynchronous:
	// retry until admitted or the deadline passes).
	testkit.Await(t, "a connection admitted again", func() bool {
		nc, err := net.Dial("tcp", s.TCPAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		code, _, err := mqtttest.New(t, nc).TryConnect(d.id, username(s, d.id), d.sas(s, time.Now().Add(time.Hour)), true, 0)
		return err == nil && code == 0
	})
}

// TestShutdownFinishesRequestsInFlight: requests already taken in are all
// answered before Shutdown closes the connection (without DISCONNECT).
func TestShutdownFinishesRequestsInFlight(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{HookLimits: hooks.Limits{RequestsPerConnectionPerMinute: -1, RegistersPerDevice: -1}})
	d := enrollSymmetric(t, s, "sym-drain")
	c := connectSym(t, s, d, true)
	c.Subscribe(1, hooks.ResponseFilter)
	const n = 14 // pipelined: read and answered one at a time, in order
	for i := 0; i < n; i++ {
		c.Publish(registerTopic+fmt.Sprint(i), 1, nil)
	}
	c.Send(mqtttest.PingreqPacket()) // PINGREQ: read after every PUBLISH above was answered
	answers, pingSeen := 0, false
	shutdown := make(chan error, 1)
	for {
		p, err := c.ReadPacket(10 * time.Second)
		if errors.Is(err, mqtttest.ErrMalformed) {
			t.Fatal(err)
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("connection still open 10 s after Shutdown")
			}
			break
		}
		switch p.Type() {
		case packets.Pingresp:
			pingSeen = true
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				shutdown <- s.Broker.Shutdown(ctx)
			}()
		case packets.Publish:
			if want := fmt.Sprintf("/202/?$rid=%d&", answers); !strings.Contains(p.TopicName, want) {
				t.Fatalf("answer %d: %q", answers, p.TopicName)
			}
			c.Puback(p.PacketID)
			answers++
		case packets.Puback:
		default:
			t.Fatalf("unexpected packet %v", p)
		}
	}
	if !pingSeen || answers != n {
		t.Fatalf("ping %v, %d of %d answers before the close", pingSeen, answers, n)
	}
	if err := <-shutdown; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// TestRequestRatePerConnection: requests beyond the per-connection rate get
// 429 (errorCode 429001) with a retry-after, and the connection stays usable.
func TestRequestRatePerConnection(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{HookLimits: hooks.Limits{
		RequestsPerConnectionPerMinute: 1,
		RequestBurstPerConnection:      2,
	}})
	d := enrollSymmetric(t, s, "sym-rate")
	c := connectSym(t, s, d, true)
	c.Subscribe(1, hooks.ResponseFilter)
	for i, want := range []string{"/202/?$rid=0&", "/404/?$rid=1", "/429/?$rid=2&retry-after="} {
		if i == 0 {
			c.Publish(registerTopic+"0", 0, nil)
		} else {
			c.Publish(pollTopic+fmt.Sprint(i)+"&operationId=none", 0, nil)
		}
		topic, body := c.ReadResponse()
		if !strings.Contains(topic, want) {
			t.Fatalf("request %d: %q %s, want %s", i, topic, body, want)
		}
		if i == 2 && decode(t, body).ErrorCode != 429001 {
			t.Fatalf("429 body %s", body)
		}
	}
	c.Ping()
}
