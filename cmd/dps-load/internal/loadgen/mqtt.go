package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
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
// than the packets it sends. Packets are encoded and decoded by mochi's
// codec (the broker's own).
type mqttConn struct {
	c       net.Conn
	r       *bufio.Reader
	buf     bytes.Buffer
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
	_ = m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	_ = m.c.Close()
}

// send encodes pk (MQTT 3.1.1) and writes it.
func (m *mqttConn) send(pk packets.Packet) error {
	pk.ProtocolVersion = 4
	m.buf.Reset()
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&m.buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&m.buf)
	case packets.Publish:
		err = pk.PublishEncode(&m.buf)
	case packets.Puback:
		err = pk.PubackEncode(&m.buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&m.buf)
	default:
		err = fmt.Errorf("no encoder for packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		return &Error{Kind: KindProtocol, Err: err}
	}
	if err := m.c.SetWriteDeadline(time.Now().Add(m.timeout)); err != nil {
		return &Error{Kind: KindNetwork, Err: err}
	}
	if _, err := m.c.Write(m.buf.Bytes()); err != nil {
		return &Error{Kind: KindNetwork, Err: err}
	}
	return nil
}

// read reads one packet and decodes the kinds a DPS session receives
// (CONNACK, SUBACK, PUBLISH, PUBACK); others come back with their fixed
// header only.
func (m *mqttConn) read(deadline time.Time) (packets.Packet, error) {
	var pk packets.Packet
	if err := m.c.SetReadDeadline(deadline); err != nil {
		return pk, &Error{Kind: KindNetwork, Err: err}
	}
	first, err := m.r.ReadByte()
	if err != nil {
		return pk, netErr(err)
	}
	n, _, err := packets.DecodeLength(m.r)
	if err != nil {
		if errors.Is(err, packets.ErrMalformedVariableByteInteger) {
			return pk, &Error{Kind: KindProtocol, Err: errors.New("malformed remaining length")}
		}
		return pk, netErr(err)
	}
	if n > maxPacket {
		return pk, &Error{Kind: KindProtocol, Err: fmt.Errorf("packet of %d bytes", n)}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(m.r, body); err != nil {
		return pk, netErr(err)
	}
	pk.ProtocolVersion = 4
	if err := pk.FixedHeader.Decode(first); err != nil {
		return pk, &Error{Kind: KindProtocol, Err: err}
	}
	pk.FixedHeader.Remaining = n
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	}
	if err != nil {
		return pk, &Error{Kind: KindProtocol, Err: err}
	}
	return pk, nil
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
	err := m.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			ClientIdentifier: clientID,
			Clean:            true,
			UsernameFlag:     username != "",
			Username:         []byte(username),
			PasswordFlag:     password != "",
			Password:         []byte(password),
		},
	})
	if err != nil {
		return err
	}
	deadline := time.Now().Add(m.timeout)
	ack, err := m.read(deadline)
	if err != nil {
		return err
	}
	if ack.FixedHeader.Type != packets.Connack {
		return &Error{Kind: KindProtocol, Err: fmt.Errorf("expected CONNACK, got packet type %d", ack.FixedHeader.Type)}
	}
	if ack.ReasonCode != 0 {
		return &Error{Kind: KindRefused, Err: fmt.Errorf("CONNACK return code %d", ack.ReasonCode)}
	}
	if !subscribe {
		return nil
	}
	m.id++
	err = m.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID:    m.id,
		Filters:     packets.Subscriptions{{Filter: ResponseFilter, Qos: 1}},
	})
	if err != nil {
		return err
	}
	for {
		sub, err := m.read(deadline)
		if err != nil {
			return err
		}
		if sub.FixedHeader.Type != packets.Suback {
			continue
		}
		if sub.PacketID != m.id || len(sub.ReasonCodes) != 1 || sub.ReasonCodes[0] > 1 {
			return &Error{Kind: KindProtocol, Err: fmt.Errorf("SUBACK %d %x", sub.PacketID, sub.ReasonCodes)}
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
	m.id++
	err := m.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   topicFor(rid),
		PacketID:    m.id,
		Payload:     body,
	})
	if err != nil {
		return answer{}, err
	}
	deadline := time.Now().Add(m.timeout)
	for {
		pk, err := m.read(deadline)
		if err != nil {
			return answer{}, err
		}
		if pk.FixedHeader.Type != packets.Publish {
			continue // PUBACK of our request
		}
		if pk.FixedHeader.Qos > 0 {
			if err := m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}); err != nil {
				return answer{}, err
			}
		}
		a, gotRID, err := parseResponseTopic(pk.TopicName)
		if err != nil {
			return answer{}, &Error{Kind: KindProtocol, Err: err}
		}
		if gotRID != rid {
			continue // a late answer to an earlier request
		}
		a.body = pk.Payload
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
