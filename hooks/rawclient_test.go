package hooks_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// rawClient is a minimal MQTT 3.1.1 client that exposes every packet in the
// order it arrives, for ordering and "what exactly was sent" checks.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
	id   uint16
}

// packet is a received MQTT packet.
type packet struct {
	typ   byte // high nibble of the first byte
	flags byte
	body  []byte
}

// Packet types.
const (
	pConnack  = 2
	pPublish  = 3
	pPuback   = 4
	pSuback   = 9
	pUnsuback = 11
	pPingresp = 13
	pDisconn  = 14
)

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, conn: c, r: bufio.NewReader(c)}
}

func mqttString(b *bytes.Buffer, s string) {
	binary.Write(b, binary.BigEndian, uint16(len(s)))
	b.WriteString(s)
}

func (c *rawClient) send(first byte, body []byte) {
	c.t.Helper()
	if err := c.sendErr(first, body); err != nil {
		c.t.Fatalf("raw write: %v", err)
	}
}

func (c *rawClient) sendErr(first byte, body []byte) error {
	var b bytes.Buffer
	b.WriteByte(first)
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b.WriteByte(d)
		if n == 0 {
			break
		}
	}
	b.Write(body)
	_, err := c.conn.Write(b.Bytes())
	return err
}

// connect sends CONNECT (3.1.1) and returns the CONNACK return code and
// session-present flag.
func (c *rawClient) connect(clientID, username, password string, clean bool, keepAlive uint16) (code byte, present bool) {
	c.t.Helper()
	code, present, err := c.tryConnect(clientID, username, password, clean, keepAlive)
	if err != nil {
		c.t.Fatal(err)
	}
	return code, present
}

// tryConnect is connect returning errors instead of failing the test.
func (c *rawClient) tryConnect(clientID, username, password string, clean bool, keepAlive uint16) (code byte, present bool, err error) {
	var b bytes.Buffer
	mqttString(&b, "MQTT")
	b.WriteByte(4)
	var flags byte
	if clean {
		flags |= 0x02
	}
	if username != "" {
		flags |= 0x80
	}
	if password != "" {
		flags |= 0x40
	}
	b.WriteByte(flags)
	binary.Write(&b, binary.BigEndian, keepAlive)
	mqttString(&b, clientID)
	if username != "" {
		mqttString(&b, username)
	}
	if password != "" {
		mqttString(&b, password)
	}
	if err := c.sendErr(0x10, b.Bytes()); err != nil {
		return 0, false, err
	}
	p, err := c.readPacket(10 * time.Second)
	if err != nil {
		return 0, false, err
	}
	if p.typ != pConnack || len(p.body) != 2 {
		return 0, false, fmt.Errorf("expected CONNACK, got %v", p)
	}
	return p.body[1], p.body[0]&1 == 1, nil
}

func (c *rawClient) nextID() uint16 {
	c.id++
	return c.id
}

// subscribe sends SUBSCRIBE and returns the SUBACK return codes.
func (c *rawClient) subscribe(qos byte, filters ...string) []byte {
	c.t.Helper()
	var b bytes.Buffer
	id := c.nextID()
	binary.Write(&b, binary.BigEndian, id)
	for _, f := range filters {
		mqttString(&b, f)
		b.WriteByte(qos)
	}
	c.send(0x82, b.Bytes())
	p := c.read()
	if p.typ != pSuback || binary.BigEndian.Uint16(p.body) != id {
		c.t.Fatalf("expected SUBACK %d, got type %d %x", id, p.typ, p.body)
	}
	return p.body[2:]
}

// unsubscribe sends UNSUBSCRIBE and waits for UNSUBACK.
func (c *rawClient) unsubscribe(filter string) {
	c.t.Helper()
	var b bytes.Buffer
	id := c.nextID()
	binary.Write(&b, binary.BigEndian, id)
	mqttString(&b, filter)
	c.send(0xA2, b.Bytes())
	p := c.read()
	if p.typ != pUnsuback || binary.BigEndian.Uint16(p.body) != id {
		c.t.Fatalf("expected UNSUBACK %d, got type %d %x", id, p.typ, p.body)
	}
}

// publish sends PUBLISH and returns its packet id (0 for QoS 0).
func (c *rawClient) publish(topic string, qos byte, payload []byte) uint16 {
	c.t.Helper()
	var b bytes.Buffer
	mqttString(&b, topic)
	var id uint16
	if qos > 0 {
		id = c.nextID()
		binary.Write(&b, binary.BigEndian, id)
	}
	b.Write(payload)
	c.send(0x30|qos<<1, b.Bytes())
	return id
}

func (c *rawClient) puback(id uint16) {
	c.send(0x40, binary.BigEndian.AppendUint16(nil, id))
}

func (c *rawClient) ping() {
	c.t.Helper()
	c.send(0xC0, nil)
	if p := c.read(); p.typ != pPingresp {
		c.t.Fatalf("expected PINGRESP, got type %d", p.typ)
	}
}

// readPacket reads one packet with a deadline.
func (c *rawClient) readPacket(d time.Duration) (packet, error) {
	c.conn.SetReadDeadline(time.Now().Add(d))
	first, err := c.r.ReadByte()
	if err != nil {
		return packet{}, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		d, err := c.r.ReadByte()
		if err != nil {
			return packet{}, err
		}
		n += int(d&0x7f) * mult
		mult *= 128
		if d&0x80 == 0 {
			break
		}
		if i > 3 {
			return packet{}, errors.New("bad remaining length")
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return packet{}, err
	}
	return packet{typ: first >> 4, flags: first & 0x0f, body: body}, nil
}

func (c *rawClient) read() packet {
	c.t.Helper()
	p, err := c.readPacket(10 * time.Second)
	if err != nil {
		c.t.Fatalf("raw read: %v", err)
	}
	return p
}

// publishParts splits a received PUBLISH.
func publishParts(p packet) (topic string, qos byte, id uint16, payload []byte) {
	n := int(binary.BigEndian.Uint16(p.body))
	topic = string(p.body[2 : 2+n])
	rest := p.body[2+n:]
	qos = (p.flags >> 1) & 3
	if qos > 0 {
		id = binary.BigEndian.Uint16(rest)
		rest = rest[2:]
	}
	return topic, qos, id, rest
}

// readResponse reads a PUBLISH (acknowledging QoS 1) and returns topic and payload.
func (c *rawClient) readResponse() (string, []byte) {
	c.t.Helper()
	p := c.read()
	if p.typ != pPublish {
		c.t.Fatalf("expected PUBLISH, got type %d %x", p.typ, p.body)
	}
	topic, qos, id, payload := publishParts(p)
	if qos == 1 {
		c.puback(id)
	}
	return topic, payload
}

// expectClosed waits for the server to close the connection and fails if
// any packet (a DISCONNECT in particular) arrives first.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	p, err := c.readPacket(10 * time.Second)
	if err == nil {
		c.t.Fatalf("expected the connection to be closed, got packet type %d %x", p.typ, p.body)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection still open after 10 s")
	}
}

func (p packet) String() string {
	return fmt.Sprintf("type %d flags %x body %q", p.typ, p.flags, p.body)
}
