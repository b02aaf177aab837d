package mqtttest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"reflect"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// allowAll is a mochi hook that lets every client connect, publish and
// subscribe.
type allowAll struct{ mqtt.HookBase }

func (*allowAll) ID() string { return "allow-all" }

func (*allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (*allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (*allowAll) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// startBroker runs a plain mochi broker that allows everything on a random
// 127.0.0.1 port and returns its address.
func startBroker(t *testing.T) string {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: false})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := srv.AddListener(listeners.NewNet("t", ln)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return addr
}

// TestRoundTrip runs every Conn method against mochi itself, in both
// protocol versions: the packets the kit encodes are accepted, and those
// mochi sends decode to what was published.
func TestRoundTrip(t *testing.T) {
	addr := startBroker(t)
	for _, v := range []byte{V311, V5} {
		c := Dial(t, addr)
		c.SetVersion(v)
		// A client id per version: mochi ends a closed connection's session
		// after DISCONNECT on its own goroutine, and with the same id that
		// cleanup could drop the next connection's subscriptions.
		if code, present := c.Connect(fmt.Sprintf("kit-v%d", v), "user", "pass", true, 30); code != 0 || present {
			t.Fatalf("v%d: CONNACK %d present %v", v, code, present)
		}
		if codes := c.Subscribe(1, "kit/#", "other"); !bytes.Equal(codes, []byte{1, 1}) {
			t.Fatalf("v%d: SUBACK %x, want QoS 1 twice", v, codes)
		}
		id := c.Publish("kit/a", 1, []byte("hello"))
		var got []byte
		for _, p := range []Packet{c.Read(), c.Read()} {
			switch p.Type() {
			case packets.Puback:
				if p.PacketID != id {
					t.Fatalf("v%d: PUBACK %d, want %d", v, p.PacketID, id)
				}
			case packets.Publish:
				if p.TopicName != "kit/a" || p.FixedHeader.Qos != 1 {
					t.Fatalf("v%d: PUBLISH %q QoS %d", v, p.TopicName, p.FixedHeader.Qos)
				}
				got = p.Payload
				c.Puback(p.PacketID)
			default:
				t.Fatalf("v%d: unexpected %v", v, p)
			}
		}
		if string(got) != "hello" {
			t.Fatalf("v%d: payload %q", v, got)
		}
		c.Unsubscribe("kit/#")
		c.Ping()
		c.Disconnect()
	}
}

// TestReadPacketDecodes: a packet is decoded by its type and version; one
// that does not decode is ErrMalformed, with its bytes.
func TestReadPacketDecodes(t *testing.T) {
	pub := Encode(PublishPacket("a/b", 1, 7, []byte("x")))
	p, err := ReadPacket(bufio.NewReader(bytes.NewReader(pub)), V311)
	if err != nil || p.Type() != packets.Publish || p.TopicName != "a/b" || p.PacketID != 7 || string(p.Payload) != "x" {
		t.Fatalf("PUBLISH read back as %+v, %v", p, err)
	}
	v5 := PublishPacket("a/b", 0, 0, []byte("x"))
	v5.ProtocolVersion = V5
	p, err = ReadPacket(bufio.NewReader(bytes.NewReader(Encode(v5))), V5)
	if err != nil || string(p.Payload) != "x" || !reflect.ValueOf(p.Properties).IsZero() {
		t.Fatalf("v5 PUBLISH read back as %+v, %v", p, err)
	}
	// A SUBACK whose packet id is cut short.
	_, err = ReadPacket(bufio.NewReader(bytes.NewReader([]byte{0x90, 1, 0})), V311)
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("short SUBACK: %v, want ErrMalformed", err)
	}
	// A CONNECT is not a packet a server sends.
	_, err = ReadPacket(bufio.NewReader(bytes.NewReader(Encode(ConnectPacket("c", "", "")))), V311)
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("CONNECT from the server: %v, want ErrMalformed", err)
	}
}

// TestEncodeFirstBytes: the fixed header bytes are those of MQTT 3.1.1
// section 2.2 for the client packets the kit builds.
func TestEncodeFirstBytes(t *testing.T) {
	for _, c := range []struct {
		name  string
		pk    packets.Packet
		first byte
	}{
		{"CONNECT", ConnectPacket("c", "u", "p"), 0x10},
		{"SUBSCRIBE", SubscribePacket(1, 1, "f"), 0x82},
		{"UNSUBSCRIBE", UnsubscribePacket(1, "f"), 0xA2},
		{"PUBLISH QoS 1", PublishPacket("t", 1, 1, nil), 0x32},
		{"PUBACK", PubackPacket(1), 0x40},
		{"PINGREQ", PingreqPacket(), 0xC0},
		{"DISCONNECT", DisconnectPacket(), 0xE0},
	} {
		if b := Encode(c.pk); b[0] != c.first {
			t.Errorf("%s: first byte %#x, want %#x", c.name, b[0], c.first)
		}
	}
	// A CONNECT without password has the password flag clear.
	b := Encode(ConnectPacket("c", "u", ""))
	if flags := b[9]; flags != 0x82 {
		t.Errorf("CONNECT flags %#x, want 0x82 (username, clean session)", flags)
	}
}
