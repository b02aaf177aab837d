package hooks_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
)

// TestMQTT5SymmetricKey provisions over MQTT 5: the PUBACK that dpsd writes
// together with the answer, and the answer itself, must be well-formed
// MQTT 5 packets (reason code, property lengths: mochi's MQTT 5 decoder
// reads each of them).
func TestMQTT5SymmetricKey(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	d := enrollSymmetric(t, s, "mqtt5-device")
	c := mqtttest.Dial(t, s.TCPAddr)
	c.SetVersion(mqtttest.V5)

	if code, _ := c.Connect(d.id, username(s, d.id), d.sasAt(s), true, 60); code != 0 {
		t.Fatalf("CONNACK reason code %d, want 0", code)
	}
	if codes := c.Subscribe(1, hooks.ResponseFilter); len(codes) != 1 || codes[0] != 1 {
		t.Fatalf("SUBACK %x, want QoS 1 granted", codes)
	}

	id := c.Publish(registerTopic+"7", 1, []byte(`{"registrationId":"mqtt5-device"}`))
	p := c.Read()
	if p.Type() != packets.Puback || p.PacketID != id || p.ReasonCode != 0 {
		t.Fatalf("first packet after the QoS 1 request: %v, want its PUBACK (success)", p)
	}
	p = c.Read()
	if p.Type() != packets.Publish || !strings.HasPrefix(p.TopicName, "$dps/registrations/res/202/?$rid=7") ||
		p.FixedHeader.Qos != 1 || p.PacketID == 0 || !reflect.ValueOf(p.Properties).IsZero() {
		t.Fatalf("answer %v: topic %q qos %d id %d properties %+v", p, p.TopicName, p.FixedHeader.Qos, p.PacketID, p.Properties)
	}
	op := decode(t, p.Payload)
	if op.OperationID == "" || op.Status != "assigning" {
		t.Fatalf("202 body %s", p.Payload)
	}
	c.Puback(p.PacketID)

	c.Publish(pollTopic+"8&operationId="+op.OperationID, 0, nil)
	topic, payload := c.ReadResponse()
	if !strings.HasPrefix(topic, "$dps/registrations/res/200/?$rid=8") {
		t.Fatalf("poll answer topic %q body %s", topic, payload)
	}
	if op = decode(t, payload); op.Status != "assigned" || op.RegistrationState == nil || op.RegistrationState.AssignedHub != dpsdtest.DefaultHub {
		t.Fatalf("poll body %s", payload)
	}
	// Nothing else was sent (no second PUBACK from mochi): the next packet
	// is the answer to a PINGREQ.
	c.Ping()
}
