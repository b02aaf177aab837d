package hooks_test

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
)

// TestNoGoroutinePerSession: requests are answered on mochi's read
// goroutine, so a session holds only mochi's two goroutines per connection
// (reader and writer), idle or after requests, and every request is still
// answered.
func TestNoGoroutinePerSession(t *testing.T) {
	const n = 40
	s := dpsdtest.Start(t, dpsdtest.Options{
		Limits:     broker.Limits{ConnectionsPerAddress: -1, ConnectionsPerAddressPerMinute: -1},
		HookLimits: hooks.Limits{RestrictedSessions: -1, RestrictedSessionsPerAddress: -1, ChallengesPerAddressPerMinute: -1, ChallengesPerMinute: -1},
	})
	base := runtime.NumGoroutine()
	clients := make([]*mqtttest.Conn, n)
	for i := range clients {
		id := fmt.Sprintf("lazy-%d", i)
		c := mqtttest.Dial(t, s.TCPAddr)
		if code, _ := c.Connect(id, username(s, id), "", true, 0); code != 0 {
			t.Fatalf("restricted CONNACK %d", code)
		}
		c.Subscribe(1, hooks.ResponseFilter)
		clients[i] = c
	}
	// Every connection has its reader and writer once its SUBACK came back.
	testkit.Await(t, "the connections' goroutines", func() bool { return runtime.NumGoroutine()-base >= 2*n })
	if idle := runtime.NumGoroutine() - base; idle >= 3*n {
		t.Fatalf("%d idle sessions run %d goroutines, want fewer than 3 each", n, idle)
	}
	// A TPM register with keys that do not parse: answered 400, and the
	// restricted session stays (any other request would end it).
	body := []byte(`{"tpm":{"endorsementKey":"AAAA","storageRootKey":"AAAA"}}`)
	for i, c := range clients {
		c.Publish(registerTopic+fmt.Sprint(i), 0, body)
		if topic, body := c.ReadResponse(); !strings.HasPrefix(topic, "$dps/registrations/res/400/") {
			t.Fatalf("bad keys answered %q %s, want 400", topic, body)
		}
	}
	for _, c := range clients {
		c.Ping()
	}
	if busy := runtime.NumGoroutine() - base; busy >= 3*n {
		t.Fatalf("%d sessions that made a request run %d goroutines, want fewer than 3 each", n, busy)
	}
}
