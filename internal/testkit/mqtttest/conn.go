package mqtttest

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Wait bounds every read of a Conn that the test does not bound itself.
const Wait = 10 * time.Second

// Conn is one raw MQTT connection of a test. Its methods fail the test on
// a network error or an unexpected packet; the ...Err and Try... forms
// return the error instead, for goroutines other than the test's.
type Conn struct {
	t       testing.TB
	nc      net.Conn
	r       *bufio.Reader
	version byte
	id      uint16
}

// New wraps an open connection (TCP, TLS, a WebSocket's net.Conn). It
// speaks MQTT 3.1.1 until SetVersion. The caller closes nc.
func New(t testing.TB, nc net.Conn) *Conn {
	return &Conn{t: t, nc: nc, r: bufio.NewReader(nc), version: V311}
}

// Dial connects over TCP to addr, closed when the test ends.
func Dial(t testing.TB, addr string) *Conn {
	t.Helper()
	return DialFrom(t, "", addr)
}

// DialFrom connects over TCP to addr from the local address ip (any of
// 127.0.0.0/8 on Linux; "" lets the system choose), closed when the test
// ends.
func DialFrom(t testing.TB, ip, addr string) *Conn {
	t.Helper()
	d := net.Dialer{Timeout: Wait}
	if ip != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ip)}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return New(t, nc)
}

// DialTLS connects over TLS to addr with cfg, closed when the test ends.
func DialTLS(t testing.TB, addr string, cfg *tls.Config) *Conn {
	t.Helper()
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: Wait}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return New(t, nc)
}

// SetVersion makes the connection encode and decode protocol version v
// (V311 or V5) from now on; Connect sends it as the protocol level.
func (c *Conn) SetVersion(v byte) { c.version = v }

// NetConn is the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Close closes the connection (without DISCONNECT).
func (c *Conn) Close() error { return c.nc.Close() }

// NextID returns a new packet id.
func (c *Conn) NextID() uint16 {
	c.id++
	return c.id
}

// Send writes pk in the connection's protocol version.
func (c *Conn) Send(pk packets.Packet) {
	c.t.Helper()
	if err := c.SendErr(pk); err != nil {
		c.t.Fatalf("mqtttest: write: %v", err)
	}
}

// SendErr is Send returning the error.
func (c *Conn) SendErr(pk packets.Packet) error {
	pk.ProtocolVersion = c.version
	_, err := c.nc.Write(Encode(pk))
	return err
}

// Connect sends CONNECT (clean session and keep-alive as given; username
// and password when not empty) and returns the CONNACK return (reason)
// code and session-present flag.
func (c *Conn) Connect(clientID, username, password string, clean bool, keepAlive uint16) (code byte, present bool) {
	c.t.Helper()
	code, present, err := c.TryConnect(clientID, username, password, clean, keepAlive)
	if err != nil {
		c.t.Fatal(err)
	}
	return code, present
}

// TryConnect is Connect returning errors instead of failing the test.
func (c *Conn) TryConnect(clientID, username, password string, clean bool, keepAlive uint16) (code byte, present bool, err error) {
	pk := ConnectPacket(clientID, username, password)
	pk.Connect.Clean, pk.Connect.Keepalive = clean, keepAlive
	if err := c.SendErr(pk); err != nil {
		return 0, false, err
	}
	p, err := c.ReadPacket(Wait)
	if err != nil {
		return 0, false, err
	}
	if p.Type() != packets.Connack {
		return 0, false, fmt.Errorf("mqtttest: expected CONNACK, got %v", p)
	}
	return p.ReasonCode, p.SessionPresent, nil
}

// Subscribe sends SUBSCRIBE for filters at qos and returns the SUBACK
// return (reason) codes.
func (c *Conn) Subscribe(qos byte, filters ...string) []byte {
	c.t.Helper()
	id := c.NextID()
	c.Send(SubscribePacket(id, qos, filters...))
	p := c.Read()
	if p.Type() != packets.Suback || p.PacketID != id {
		c.t.Fatalf("mqtttest: expected SUBACK %d, got %v", id, p)
	}
	return p.ReasonCodes
}

// Unsubscribe sends UNSUBSCRIBE and waits for its UNSUBACK.
func (c *Conn) Unsubscribe(filters ...string) {
	c.t.Helper()
	id := c.NextID()
	c.Send(UnsubscribePacket(id, filters...))
	if p := c.Read(); p.Type() != packets.Unsuback || p.PacketID != id {
		c.t.Fatalf("mqtttest: expected UNSUBACK %d, got %v", id, p)
	}
}

// Publish sends PUBLISH and returns its packet id (0 for QoS 0).
func (c *Conn) Publish(topic string, qos byte, payload []byte) uint16 {
	c.t.Helper()
	var id uint16
	if qos > 0 {
		id = c.NextID()
	}
	c.Send(PublishPacket(topic, qos, id, payload))
	return id
}

// Puback acknowledges the QoS 1 PUBLISH id.
func (c *Conn) Puback(id uint16) {
	c.t.Helper()
	c.Send(PubackPacket(id))
}

// Ping sends PINGREQ and fails unless the next packet is PINGRESP.
func (c *Conn) Ping() {
	c.t.Helper()
	c.Send(PingreqPacket())
	if p := c.Read(); p.Type() != packets.Pingresp {
		c.t.Fatalf("mqtttest: expected PINGRESP, got %v", p)
	}
}

// Disconnect sends DISCONNECT and closes the connection.
func (c *Conn) Disconnect() {
	c.t.Helper()
	c.Send(DisconnectPacket())
	c.nc.Close()
}

// ReadPacket reads one packet, waiting at most d.
func (c *Conn) ReadPacket(d time.Duration) (Packet, error) {
	if err := c.nc.SetReadDeadline(time.Now().Add(d)); err != nil {
		return Packet{}, err
	}
	return ReadPacket(c.r, c.version)
}

// Read reads one packet, waiting at most Wait.
func (c *Conn) Read() Packet {
	c.t.Helper()
	p, err := c.ReadPacket(Wait)
	if err != nil {
		c.t.Fatalf("mqtttest: read: %v", err)
	}
	return p
}

// ReadResponse reads a PUBLISH (acknowledging it at QoS 1) and returns its
// topic and payload.
func (c *Conn) ReadResponse() (string, []byte) {
	c.t.Helper()
	p := c.Read()
	if p.Type() != packets.Publish {
		c.t.Fatalf("mqtttest: expected PUBLISH, got %v", p)
	}
	if p.FixedHeader.Qos == 1 {
		c.Puback(p.PacketID)
	}
	return p.TopicName, p.Payload
}

// ExpectClosed waits for the server to close the connection and fails if
// any packet (a DISCONNECT in particular) arrives first, or if it is still
// open after Wait.
func (c *Conn) ExpectClosed() {
	c.t.Helper()
	p, err := c.ReadPacket(Wait)
	if err == nil || errors.Is(err, ErrMalformed) {
		c.t.Fatalf("mqtttest: expected the connection to be closed, got %v", p)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("mqtttest: connection still open after %v", Wait)
	}
}
