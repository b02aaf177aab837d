package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// MQTT 3.1.1 packet types (high nibble of the first byte).
const (
	pktConnect    = 1
	pktConnack    = 2
	pktPublish    = 3
	pktPuback     = 4
	pktSubscribe  = 8
	pktSuback     = 9
	pktDisconnect = 14
)

// ResponseFilter is the one filter a DPS device subscribes to.
const ResponseFilter = "$dps/registrations/res/#"

// responsePrefix starts every response topic.
const responsePrefix = "$dps/registrations/res/"

// maxPacket bounds a packet read from the broker.
const maxPacket = 256 << 10

// mqttConn is a minimal MQTT 3.1.1 client for one DPS session: CONNECT,
// SUBSCRIBE to the response filter, then request/response round trips
// matched by $rid. It is lean on purpose: the load generator shares the
// machine with the server, and a full client library would cost more CPU
// than the packets it sends.
type mqttConn struct {
	c       net.Conn
	r       *bufio.Reader
	buf     []byte
	id      uint16
	rid     int
	timeout time.Duration
}

// dialMQTT opens TCP (and TLS when tlsCfg is set) to addr.
func dialMQTT(ctx context.Context, addr string, tlsCfg *tls.Config, timeout time.Duration) (*mqttConn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &Error{Kind: KindDial, Err: err}
	}
	if tlsCfg != nil {
		tc := tls.Client(c, tlsCfg)
		hctx, cancel := context.WithTimeout(ctx, timeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			c.Close()
			return nil, &Error{Kind: KindTLS, Err: err}
		}
		c = tc
	}
	return &mqttConn{c: c, r: bufio.NewReaderSize(c, 4096), timeout: timeout}, nil
}

// close sends DISCONNECT (best effort) and closes the connection.
func (m *mqttConn) close() {
	_ = m.c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = m.c.Write([]byte{pktDisconnect << 4, 0})
	_ = m.c.Close()
}

// appendString appends an MQTT UTF-8 string (2-byte length, bytes).
func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// send writes one packet: the first byte, the remaining length, body.
func (m *mqttConn) send(first byte, body []byte) error {
	b := m.buf[:0]
	b = append(b, first)
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			break
		}
	}
	b = append(b, body...)
	m.buf = b
	if err := m.c.SetWriteDeadline(time.Now().Add(m.timeout)); err != nil {
		return &Error{Kind: KindNetwork, Err: err}
	}
	if _, err := m.c.Write(b); err != nil {
		return &Error{Kind: KindNetwork, Err: err}
	}
	return nil
}

// read reads one packet: its first byte and body.
func (m *mqttConn) read(deadline time.Time) (first byte, body []byte, err error) {
	if err := m.c.SetReadDeadline(deadline); err != nil {
		return 0, nil, &Error{Kind: KindNetwork, Err: err}
	}
	first, err = m.r.ReadByte()
	if err != nil {
		return 0, nil, netErr(err)
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		d, err := m.r.ReadByte()
		if err != nil {
			return 0, nil, netErr(err)
		}
		n += int(d&0x7f) * mult
		mult *= 128
		if d&0x80 == 0 {
			break
		}
		if i == 3 {
			return 0, nil, &Error{Kind: KindProtocol, Err: errors.New("malformed remaining length")}
		}
	}
	if n > maxPacket {
		return 0, nil, &Error{Kind: KindProtocol, Err: fmt.Errorf("packet of %d bytes", n)}
	}
	body = make([]byte, n)
	if _, err := io.ReadFull(m.r, body); err != nil {
		return 0, nil, netErr(err)
	}
	return first, body, nil
}

// netErr classifies a read error: a timeout or a closed connection.
func netErr(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &Error{Kind: KindTimeout, Err: err}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &Error{Kind: KindClosed, Err: err}
	}
	return &Error{Kind: KindNetwork, Err: err}
}

// connect sends CONNECT (clean session, keep-alive 0, as the Azure C SDK)
// and checks the CONNACK; subscribe also sends SUBSCRIBE to the response
// filter at QoS 1 and checks the SUBACK.
func (m *mqttConn) connect(clientID, username, password string, subscribe bool) error {
	b := make([]byte, 0, 64+len(clientID)+len(username)+len(password))
	b = appendString(b, "MQTT")
	b = append(b, 4)
	flags := byte(0x02)
	if username != "" {
		flags |= 0x80
	}
	if password != "" {
		flags |= 0x40
	}
	b = append(b, flags, 0, 0)
	b = appendString(b, clientID)
	if username != "" {
		b = appendString(b, username)
	}
	if password != "" {
		b = appendString(b, password)
	}
	if err := m.send(pktConnect<<4, b); err != nil {
		return err
	}
	deadline := time.Now().Add(m.timeout)
	first, body, err := m.read(deadline)
	if err != nil {
		return err
	}
	if first>>4 != pktConnack || len(body) != 2 {
		return &Error{Kind: KindProtocol, Err: fmt.Errorf("expected CONNACK, got packet type %d", first>>4)}
	}
	if body[1] != 0 {
		return &Error{Kind: KindRefused, Err: fmt.Errorf("CONNACK return code %d", body[1])}
	}
	if !subscribe {
		return nil
	}
	m.id++
	sb := binary.BigEndian.AppendUint16(make([]byte, 0, 32), m.id)
	sb = appendString(sb, ResponseFilter)
	sb = append(sb, 1)
	if err := m.send(pktSubscribe<<4|0x02, sb); err != nil {
		return err
	}
	for {
		first, body, err := m.read(deadline)
		if err != nil {
			return err
		}
		if first>>4 != pktSuback {
			continue
		}
		if len(body) != 3 || binary.BigEndian.Uint16(body) != m.id || body[2] > 1 {
			return &Error{Kind: KindProtocol, Err: fmt.Errorf("SUBACK %x", body)}
		}
		return nil
	}
}

// answer is a DPS response.
type answer struct {
	status     int
	retryAfter time.Duration // -1 when absent
	body       []byte
}

// request publishes body at QoS 1 to topicFor(rid) and waits for the
// response with that $rid, acknowledging it.
func (m *mqttConn) request(topicFor func(rid string) string, body []byte) (answer, error) {
	m.rid++
	rid := strconv.Itoa(m.rid)
	topic := topicFor(rid)
	m.id++
	b := make([]byte, 0, 4+len(topic)+len(body))
	b = appendString(b, topic)
	b = binary.BigEndian.AppendUint16(b, m.id)
	b = append(b, body...)
	if err := m.send(pktPublish<<4|0x02, b); err != nil {
		return answer{}, err
	}
	deadline := time.Now().Add(m.timeout)
	for {
		first, pb, err := m.read(deadline)
		if err != nil {
			return answer{}, err
		}
		if first>>4 != pktPublish {
			continue // PUBACK of our request
		}
		if len(pb) < 2 {
			return answer{}, &Error{Kind: KindProtocol, Err: errors.New("short PUBLISH")}
		}
		tl := int(binary.BigEndian.Uint16(pb))
		if len(pb) < 2+tl {
			return answer{}, &Error{Kind: KindProtocol, Err: errors.New("PUBLISH topic truncated")}
		}
		rtopic := string(pb[2 : 2+tl])
		rest := pb[2+tl:]
		if qos := (first >> 1) & 3; qos > 0 {
			if len(rest) < 2 {
				return answer{}, &Error{Kind: KindProtocol, Err: errors.New("PUBLISH id truncated")}
			}
			if err := m.send(pktPuback<<4, rest[:2]); err != nil {
				return answer{}, err
			}
			rest = rest[2:]
		}
		a, gotRID, err := parseResponseTopic(rtopic)
		if err != nil {
			return answer{}, &Error{Kind: KindProtocol, Err: err}
		}
		if gotRID != rid {
			continue // a late answer to an earlier request
		}
		a.body = rest
		return a, nil
	}
}

// parseResponseTopic reads "$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]".
func parseResponseTopic(topic string) (answer, string, error) {
	rest, ok := strings.CutPrefix(topic, responsePrefix)
	if !ok {
		return answer{}, "", fmt.Errorf("unexpected response topic %q", topic)
	}
	status, query, ok := strings.Cut(rest, "/?")
	if !ok {
		return answer{}, "", fmt.Errorf("response topic without query: %q", topic)
	}
	st, err := strconv.Atoi(status)
	if err != nil {
		return answer{}, "", fmt.Errorf("response status %q: %w", status, err)
	}
	a := answer{status: st, retryAfter: -1}
	var rid string
	for _, kv := range strings.Split(query, "&") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "$rid":
			rid = v
		case "retry-after":
			if s, err := strconv.Atoi(v); err == nil && s >= 0 {
				a.retryAfter = time.Duration(s) * time.Second
			}
		}
	}
	return a, rid, nil
}
