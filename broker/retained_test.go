package broker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/provision"
	"github.com/tpmdps/dpsd/store/bolt"
)

const testIDScope = "0ne00000001"

// newTestBroker starts a broker on cfg's addresses with a real provisioning
// service over a bbolt store, stopped when the test ends.
func newTestBroker(t *testing.T, cfg Config) *Broker {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "dpsd.db"), bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	secret := make([]byte, 32)
	rand.Read(secret)
	svc, err := provision.New(provision.Config{IDScope: testIDScope, Store: st, ChallengeSecret: secret, Hubs: []string{"hub.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg, func(env HookEnv) (Hook, error) {
		return hooks.New(hooks.Config{Service: svc, Server: env.Server, Refusals: env.Refusals})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Shutdown(context.Background()) })
	return b
}

// mqttPacket frames an MQTT packet: first byte, remaining length, body.
func mqttPacket(first byte, body []byte) []byte {
	out := []byte{first}
	for n := len(body); ; {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

// readPacketType reads one MQTT packet and returns its type.
func readPacketType(t *testing.T, r *bufio.Reader) byte {
	t.Helper()
	first, err := r.ReadByte()
	if err != nil {
		t.Fatalf("reading packet: %v", err)
	}
	n, mul := 0, 1
	for {
		b, err := r.ReadByte()
		if err != nil {
			t.Fatalf("reading packet length: %v", err)
		}
		n += int(b&0x7f) * mul
		mul *= 128
		if b&0x80 == 0 {
			break
		}
	}
	if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
		t.Fatalf("reading packet body: %v", err)
	}
	return first >> 4
}

// TestNoRetainedMessagesOnSubscribe: a subscription made through the broker
// is stored with retain handling 2 (so mochi does not search its retained
// index), and gets no retained message even when the index holds one on a
// matching topic. A PINGREQ sent right after SUBSCRIBE must be answered
// before anything else: mochi writes retained messages while handling the
// SUBSCRIBE, so one would come first.
func TestNoRetainedMessagesOnSubscribe(t *testing.T) {
	b := newTestBroker(t, Config{TCPAddr: "127.0.0.1:0"})
	b.srv.Topics.RetainMessage(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
		TopicName:   "$dps/registrations/res/200/?$rid=retained",
		Payload:     []byte("{}"),
	})

	c, err := net.Dial("tcp", b.Addr(ListenerTCP).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	str := func(b *bytes.Buffer, s string) {
		binary.Write(b, binary.BigEndian, uint16(len(s)))
		b.WriteString(s)
	}
	var connect bytes.Buffer
	str(&connect, "MQTT")
	connect.Write([]byte{4, 0x82, 0, 0}) // 3.1.1, username and clean session, keep-alive 0
	str(&connect, "dev-retained")
	str(&connect, testIDScope+"/registrations/dev-retained/api-version=2019-03-31&ClientVersion=test")
	var sub bytes.Buffer
	sub.Write([]byte{0, 1})
	str(&sub, hooks.ResponseFilter)
	sub.WriteByte(1)
	var out []byte
	out = append(out, mqttPacket(packets.Connect<<4, connect.Bytes())...)
	out = append(out, mqttPacket(packets.Subscribe<<4|2, sub.Bytes())...)
	out = append(out, mqttPacket(packets.Pingreq<<4, nil)...)
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	for _, want := range []byte{packets.Connack, packets.Suback, packets.Pingresp} {
		if got := readPacketType(t, r); got != want {
			t.Fatalf("got packet type %d, want %d (CONNACK, SUBACK, PINGRESP in that order)", got, want)
		}
	}
	// The broker's hooks marked the subscription, so mochi skipped its
	// retained-message search.
	clients := b.srv.Clients.GetByListener(ListenerTCP)
	if len(clients) != 1 {
		t.Fatalf("%d clients connected, want 1", len(clients))
	}
	stored, ok := clients[0].State.Subscriptions.Get(hooks.ResponseFilter)
	if !ok || stored.RetainHandling != 2 {
		t.Fatalf("subscription %+v (found %v), want retain handling 2", stored, ok)
	}
}

// TestNoRetainedScanHook marks every filter "no retained messages".
func TestNoRetainedScanHook(t *testing.T) {
	pk := packets.Packet{Filters: packets.Subscriptions{{Filter: "a/#"}, {Filter: "b", RetainHandling: 1}}}
	out := new(noRetainedScanHook).OnSubscribe(nil, pk)
	for _, f := range out.Filters {
		if f.RetainHandling != 2 {
			t.Fatalf("filter %q: retain handling %d, want 2", f.Filter, f.RetainHandling)
		}
	}
}
