// Package mqtttest is a raw MQTT client for tests: it sends exactly the
// packets a test asks for and hands back every packet in the order it
// arrives, for checks of order ("PUBACK before the answer") and of what
// exactly was sent. Packets are encoded and decoded by mochi-mqtt's codec
// (github.com/mochi-mqtt/server/v2/packets), the broker's own, so a packet
// the server sends that does not decode fails the test.
//
// Conn is the client of one test; the package functions build and read
// packets where a test (a flood of goroutines, a WebSocket) writes its own
// bytes.
package mqtttest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Protocol versions (the CONNECT protocol level).
const (
	V311 byte = 4 // MQTT 3.1.1
	V5   byte = 5 // MQTT 5
)

// MaxPacket bounds the body of a packet read (the server's answers are a
// few KiB).
const MaxPacket = 1 << 20

// ErrMalformed reports a packet that arrived whole but does not decode.
var ErrMalformed = errors.New("mqtttest: malformed packet")

// Packet is one packet as it arrived: its fixed header's first byte, its
// body, and mochi's decoding of both (FixedHeader, PacketID, TopicName,
// Payload, ReasonCode(s), SessionPresent, Properties, ...).
type Packet struct {
	packets.Packet
	First byte   // the fixed header's first byte
	Body  []byte // the bytes after the remaining length
}

// Type is the packet type (packets.Connack, packets.Publish, ...).
func (p Packet) Type() byte { return p.First >> 4 }

// String describes the packet for failure messages.
func (p Packet) String() string {
	return fmt.Sprintf("type %d flags %x body %q", p.First>>4, p.First&0x0f, p.Body)
}

// ConnectPacket is a 3.1.1 CONNECT with keep-alive 0 and clean session, as
// the Azure device SDKs send it; the username and password flags are set
// when they are not empty. Change its fields for anything else.
func ConnectPacket(clientID, username, password string) packets.Packet {
	return packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: V311,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			ClientIdentifier: clientID,
			Clean:            true,
			UsernameFlag:     username != "",
			Username:         []byte(username),
			PasswordFlag:     password != "",
			Password:         []byte(password),
		},
	}
}

// SubscribePacket subscribes to filters at qos, with packet id id.
func SubscribePacket(id uint16, qos byte, filters ...string) packets.Packet {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: V311,
		PacketID:        id,
	}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: qos})
	}
	return pk
}

// UnsubscribePacket unsubscribes from filters, with packet id id.
func UnsubscribePacket(id uint16, filters ...string) packets.Packet {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1},
		ProtocolVersion: V311,
		PacketID:        id,
	}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f})
	}
	return pk
}

// PublishPacket publishes payload on topic at qos (packet id id; 0 for QoS 0).
func PublishPacket(topic string, qos byte, id uint16, payload []byte) packets.Packet {
	return packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: qos},
		ProtocolVersion: V311,
		TopicName:       topic,
		PacketID:        id,
		Payload:         payload,
	}
}

// PubackPacket acknowledges the QoS 1 PUBLISH id.
func PubackPacket(id uint16) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: V311, PacketID: id}
}

// PingreqPacket is a PINGREQ.
func PingreqPacket() packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}, ProtocolVersion: V311}
}

// DisconnectPacket is a DISCONNECT (normal disconnection).
func DisconnectPacket() packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: V311}
}

// Encode returns pk's wire form, in protocol version pk.ProtocolVersion
// (3.1.1 when 0), from mochi's encoder for its type. It panics on a
// packet mochi refuses to encode (a QoS 1 PUBLISH without packet id, a
// client packet type it has no encoder for): a mistake in the test.
func Encode(pk packets.Packet) []byte {
	if pk.ProtocolVersion == 0 {
		pk.ProtocolVersion = V311
	}
	var b bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&b)
	case packets.Publish:
		err = pk.PublishEncode(&b)
	case packets.Puback:
		err = pk.PubackEncode(&b)
	case packets.Pubrec:
		err = pk.PubrecEncode(&b)
	case packets.Pubrel:
		err = pk.PubrelEncode(&b)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&b)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&b)
	case packets.Unsubscribe:
		err = pk.UnsubscribeEncode(&b)
	case packets.Pingreq:
		err = pk.PingreqEncode(&b)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&b)
	case packets.Auth:
		err = pk.AuthEncode(&b)
	default:
		err = fmt.Errorf("no encoder for packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		panic(fmt.Sprintf("mqtttest: encode: %v", err))
	}
	return b.Bytes()
}

// ReadPacket reads one packet from r and decodes it as protocol version
// (V311 or V5). A packet that does not decode is an ErrMalformed error,
// with the packet returned as read.
func ReadPacket(r *bufio.Reader, version byte) (Packet, error) {
	first, err := r.ReadByte()
	if err != nil {
		return Packet{}, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return Packet{}, fmt.Errorf("mqtttest: remaining length: %w", err)
	}
	if n > MaxPacket {
		return Packet{}, fmt.Errorf("mqtttest: packet of %d bytes", n)
	}
	p := Packet{First: first, Body: make([]byte, n)}
	if _, err := io.ReadFull(r, p.Body); err != nil {
		return Packet{}, err
	}
	if err := decode(&p, version); err != nil {
		return p, fmt.Errorf("%w: %v: %w", ErrMalformed, p, err)
	}
	return p, nil
}

// decode fills p.Packet from p.First and p.Body with mochi's decoder for
// the packet's type.
func decode(p *Packet, version byte) error {
	pk := &p.Packet
	pk.ProtocolVersion = version
	if err := pk.FixedHeader.Decode(p.First); err != nil {
		return err
	}
	pk.FixedHeader.Remaining = len(p.Body)
	switch pk.FixedHeader.Type {
	case packets.Connack:
		return pk.ConnackDecode(p.Body)
	case packets.Publish:
		return pk.PublishDecode(p.Body)
	case packets.Puback:
		return pk.PubackDecode(p.Body)
	case packets.Pubrec:
		return pk.PubrecDecode(p.Body)
	case packets.Pubrel:
		return pk.PubrelDecode(p.Body)
	case packets.Pubcomp:
		return pk.PubcompDecode(p.Body)
	case packets.Suback:
		return pk.SubackDecode(p.Body)
	case packets.Unsuback:
		return pk.UnsubackDecode(p.Body)
	case packets.Pingresp:
		return pk.PingrespDecode(p.Body)
	case packets.Disconnect:
		return pk.DisconnectDecode(p.Body)
	case packets.Auth:
		return pk.AuthDecode(p.Body)
	}
	return fmt.Errorf("packet type %d is not one a server sends", pk.FixedHeader.Type)
}
