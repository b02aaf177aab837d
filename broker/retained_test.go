package broker

import (
	"bufio"
	"context"
	"crypto/rand"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
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
	user := testIDScope + "/registrations/dev-retained/api-version=2019-03-31&ClientVersion=test"
	var out []byte
	out = append(out, mqtttest.Encode(mqtttest.ConnectPacket("dev-retained", user, ""))...)
	out = append(out, mqtttest.Encode(mqtttest.SubscribePacket(1, 1, hooks.ResponseFilter))...)
	out = append(out, mqtttest.Encode(mqtttest.PingreqPacket())...)
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	for _, want := range []byte{packets.Connack, packets.Suback, packets.Pingresp} {
		p, err := mqtttest.ReadPacket(r, mqtttest.V311)
		if err != nil {
			t.Fatalf("reading packet: %v", err)
		}
		if p.Type() != want {
			t.Fatalf("got %v, want packet type %d (CONNACK, SUBACK, PINGRESP in that order)", p, want)
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
