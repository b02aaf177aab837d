package hooks_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
)

func BenchmarkParseRequestTopic(b *testing.B) {
	topic := "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=0f8fad5b-d9cb-469f-a165-70867728950e&operationId=4.d0a4d06b5b4b2e4c.9b7b8f37"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := hooks.ParseRequestTopic(topic); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRegisterPollRoundTrip measures a symmetric key device's register
// and poll over one plain TCP connection (QoS 1 requests, QoS 1 answers),
// with 8 devices in parallel: each iteration is one register + one poll.
func BenchmarkRegisterPollRoundTrip(b *testing.B) {
	s := dpsdtest.Start(b, dpsdtest.Options{HookLimits: hooks.Limits{RequestsPerConnectionPerMinute: -1, PollsPerDevice: -1, RegistersPerDevice: -1}})
	const devices = 8
	clients := make([]*mqtttest.Conn, devices)
	for i := range clients {
		d := enrollSymmetric(b, s, fmt.Sprintf("bench-%d", i))
		c := mqtttest.Dial(b, s.TCPAddr)
		if code, _ := c.Connect(d.id, username(s, d.id), d.sasAt(s), true, 0); code != 0 {
			b.Fatalf("CONNACK %d", code)
		}
		c.Subscribe(1, hooks.ResponseFilter)
		clients[i] = c
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/devices + 1
	for _, c := range clients {
		wg.Add(1)
		go func(c *mqtttest.Conn) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				c.Publish(registerTopic+"1", 1, nil)
				c.Read() // PUBACK
				_, body := c.ReadResponse()
				op := strings.Split(strings.Split(string(body), `"operationId":"`)[1], `"`)[0]
				c.Publish(pollTopic+"2&operationId="+op, 1, nil)
				c.Read()
				c.ReadResponse()
			}
		}(c)
	}
	wg.Wait()
}
