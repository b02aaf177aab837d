package hooks_test

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
)

// mqtt5Publish splits a received MQTT 5 PUBLISH: topic, QoS, packet id,
// properties and payload.
func mqtt5Publish(t *testing.T, p packet) (topic string, qos byte, id uint16, props, payload []byte) {
	t.Helper()
	if p.typ != pPublish {
		t.Fatalf("expected PUBLISH, got %v", p)
	}
	b := p.body
	n := int(binary.BigEndian.Uint16(b))
	topic, b = string(b[2:2+n]), b[2+n:]
	qos = (p.flags >> 1) & 3
	if qos > 0 {
		id, b = binary.BigEndian.Uint16(b), b[2:]
	}
	plen, k := binary.Uvarint(b) // MQTT's variable byte integer is LEB128
	if k <= 0 || int(plen) > len(b)-k {
		t.Fatalf("PUBLISH properties length unreadable: %x", p.body)
	}
	return topic, qos, id, b[k : k+int(plen)], b[k+int(plen):]
}

// TestMQTT5SymmetricKey provisions over MQTT 5 with hand-built packets: the
// PUBACK that dpsd writes together with the answer, and the answer itself,
// must be well-formed MQTT 5 packets (reason code, property lengths).
func TestMQTT5SymmetricKey(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	d := enrollSymmetric(t, s, "mqtt5-device")
	c := dialRaw(t, s.TCPAddr)

	var b bytes.Buffer
	mqttString(&b, "MQTT")
	b.WriteByte(5)         // protocol level
	b.WriteByte(0xC2)      // username, password, clean start
	b.Write([]byte{0, 60}) // keep-alive
	b.WriteByte(0)         // no properties
	mqttString(&b, d.id)   // client id
	mqttString(&b, username(s, d.id))
	mqttString(&b, d.sasAt(s))
	c.send(0x10, b.Bytes())
	p := c.read()
	if p.typ != pConnack || len(p.body) < 3 || p.body[1] != 0 {
		t.Fatalf("CONNACK %v, want reason code 0", p)
	}

	b.Reset()
	b.Write([]byte{0, 1, 0}) // packet id 1, no properties
	mqttString(&b, hooks.ResponseFilter)
	b.WriteByte(1) // QoS 1
	c.send(0x82, b.Bytes())
	if p = c.read(); p.typ != pSuback || len(p.body) < 4 || binary.BigEndian.Uint16(p.body) != 1 || p.body[len(p.body)-1] != 1 {
		t.Fatalf("SUBACK %v, want packet id 1 granting QoS 1", p)
	}

	b.Reset()
	mqttString(&b, registerTopic+"7")
	b.Write([]byte{0, 2, 0}) // packet id 2, no properties
	b.WriteString(`{"registrationId":"mqtt5-device"}`)
	c.send(0x32, b.Bytes())
	p = c.read()
	if p.typ != pPuback || len(p.body) < 2 || binary.BigEndian.Uint16(p.body) != 2 || (len(p.body) > 2 && p.body[2] != 0) {
		t.Fatalf("first packet after the QoS 1 request: %v, want its PUBACK (success)", p)
	}
	topic, qos, id, props, payload := mqtt5Publish(t, c.read())
	if !strings.HasPrefix(topic, "$dps/registrations/res/202/?$rid=7") || qos != 1 || id == 0 || len(props) != 0 {
		t.Fatalf("answer topic %q qos %d id %d properties %x", topic, qos, id, props)
	}
	op := decode(t, payload)
	if op.OperationID == "" || op.Status != "assigning" {
		t.Fatalf("202 body %s", payload)
	}
	c.send(0x40, []byte{byte(id >> 8), byte(id)})

	b.Reset()
	mqttString(&b, pollTopic+"8&operationId="+op.OperationID)
	b.WriteByte(0) // QoS 0: no packet id; no properties
	c.send(0x30, b.Bytes())
	topic, _, _, _, payload = mqtt5Publish(t, c.read())
	if !strings.HasPrefix(topic, "$dps/registrations/res/200/?$rid=8") {
		t.Fatalf("poll answer topic %q body %s", topic, payload)
	}
	if op = decode(t, payload); op.Status != "assigned" || op.RegistrationState == nil || op.RegistrationState.AssignedHub != dpsdtest.DefaultHub {
		t.Fatalf("poll body %s", payload)
	}
	// Nothing else was sent (no second PUBACK from mochi): the next packet
	// is the answer to a PINGREQ.
	c.send(0xC0, nil)
	if p = c.read(); p.typ != pPingresp {
		t.Fatalf("expected PINGRESP, got %v", p)
	}
}
