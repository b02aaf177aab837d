package hooks_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/refusal"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
)

// tcpDialerFrom dials the plain listener from the source address ip.
func tcpDialerFrom(s *dpsdtest.Server, ip string) dialer {
	return func(t *testing.T) *mqtttest.Conn { return mqtttest.DialFrom(t, ip, s.TCPAddr) }
}

// holdRestricted opens restricted sessions from ip until n have been tried
// and returns the admitted ones (subscribed); the others must get CONNACK 3.
func holdRestricted(t *testing.T, s *dpsdtest.Server, ip, prefix string, n int) []*mqtttest.Conn {
	t.Helper()
	var held []*mqtttest.Conn
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		c := mqtttest.DialFrom(t, ip, s.TCPAddr)
		code, _, err := c.TryConnect(id, username(s, id), "", true, 0)
		switch {
		case err != nil:
			t.Fatalf("restricted session %d: %v", i, err)
		case code == 0:
			c.Subscribe(1, hooks.ResponseFilter)
			held = append(held, c)
		case code == 3:
			c.ExpectClosed()
		default:
			t.Fatalf("restricted session %d: CONNACK %d", i, code)
		}
	}
	return held
}

// TestRestrictedFloodFromOneAddress: one address tries to hold every
// restricted slot and to keep its sessions alive with polls (the audit's
// flood, scaled down: a total cap of 40 instead of 1,000). It gets at most
// restricted-sessions-per-address of them, every poll ends its session, and
// a TPM device from another address provisions; when the address refills
// its share and just holds it, the device still provisions.
func TestRestrictedFloodFromOneAddress(t *testing.T) {
	const totalCap = 40
	tpm := tpmsim.Open(t)
	mx := &observer{}
	s := dpsdtest.Start(t, dpsdtest.Options{Metrics: mx, HookLimits: hooks.Limits{RestrictedSessions: totalCap}})
	ek, srk := tpmKeys(t, tpm, devtpm.ECCP256, devtpm.SRKECCP256)
	id := "tpm-beside-a-flood"
	enrollTPM(t, s, id, ek.Public())
	device := tcpDialerFrom(s, "127.0.0.2")
	provision := func() {
		t.Helper()
		ch := getChallenge(t, s, device, id, ek.Public(), srk.Public())
		finish(t, s, device, id, activate(t, s, ek, srk, id, ch, time.Now().Add(time.Hour)), ek.Public(), srk.Public())
	}

	// The flood: every slot asked for from 127.0.0.1, each session polling
	// to stay alive.
	flood := holdRestricted(t, s, "127.0.0.1", "flood", totalCap)
	for i, c := range flood {
		c.Publish(fmt.Sprintf("%s%d&operationId=keepalive", pollTopic, i), 0, nil)
		if topic, body := c.ReadResponse(); !strings.Contains(topic, "/401/") {
			t.Fatalf("poll on a restricted session: %q %s, want 401", topic, body)
		}
	}
	provision() // from 127.0.0.2

	if len(flood) != hooks.DefaultRestrictedSessionsPerAddress {
		t.Fatalf("one address held %d restricted sessions, want the per-address cap %d", len(flood), hooks.DefaultRestrictedSessionsPerAddress)
	}
	for _, c := range flood {
		c.ExpectClosed() // the poll ended the session
	}
	testkit.Await(t, "the flood's sessions released", func() bool { _, r := s.Broker.Sessions(); return r == 0 })

	// The address takes its share again and just holds it (no polls).
	if again := holdRestricted(t, s, "127.0.0.1", "refill", totalCap); len(again) != hooks.DefaultRestrictedSessionsPerAddress {
		t.Fatalf("refill: one address holds %d restricted sessions, want %d", len(again), hooks.DefaultRestrictedSessionsPerAddress)
	}
	provision()

	refused := mx.ConnectionsRefused()[broker.ListenerTCP+"/"+refusal.RestrictedAddressCap]
	if want := 2 * (totalCap - hooks.DefaultRestrictedSessionsPerAddress); refused != want {
		t.Fatalf("%v restricted sessions counted as refused by the per-address cap, want %v", refused, want)
	}
}

// TestRestrictedSessionEndsOnOtherRequests: a restricted session exists for
// the TPM challenge only. A poll, a register without tpm and a register
// whose body does not parse are answered and then end the session; a
// register with tpm keeps it open.
func TestRestrictedSessionEndsOnOtherRequests(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	cases := []struct {
		name, topic string
		body        []byte
		status      string
		closes      bool
	}{
		{"poll", pollTopic + "1&operationId=4.0123456789abcdef.00000000-0000-0000-0000-000000000000", nil, "/401/", true},
		{"register without tpm", registerTopic + "1", []byte(`{"payload":{"model":"x"}}`), "/401/", true},
		{"empty register", registerTopic + "1", nil, "/401/", true},
		{"register body not JSON", registerTopic + "1", []byte(`{`), "/400/", true},
		{"register with tpm", registerTopic + "1", []byte(`{"tpm":{"endorsementKey":"AAAA","storageRootKey":"AAAA"}}`), "/400/", false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("r-%d", i)
			c := restrictedConn(t, s, tcpDialer(s), id)
			c.Publish(tc.topic, 1, tc.body)
			if p := c.Read(); p.Type() != packets.Puback {
				t.Fatalf("want PUBACK, got %v", p)
			}
			if topic, body := c.ReadResponse(); !strings.Contains(topic, tc.status) {
				t.Fatalf("answer %q %s, want %s", topic, body, tc.status)
			}
			if tc.closes {
				c.ExpectClosed()
			} else {
				c.Ping()
			}
		})
	}
}

// TestRestrictedLifetime: a restricted session that keeps sending TPM
// register requests (each of which resets its idle timer) is still closed
// at the end of its lifetime.
func TestRestrictedLifetime(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{Limits: broker.Limits{
		ConnectionsPerAddressPerMinute: -1,
	}, HookLimits: hooks.Limits{
		RestrictedLifetime:             300 * time.Millisecond,
		RestrictedIdleTimeout:          time.Hour,
		ChallengesPerConnection:        -1,
		ChallengesPerAddressPerMinute:  -1,
		ChallengesPerMinute:            -1,
		RequestsPerConnectionPerMinute: -1,
	}})
	c := restrictedConn(t, s, tcpDialer(s), "tpm-forever")
	body := []byte(`{"tpm":{"endorsementKey":"AAAA","storageRootKey":"AAAA"}}`)
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		if err := c.SendErr(mqtttest.PublishPacket(fmt.Sprint(registerTopic, i), 0, 0, body)); err != nil {
			break // closed while writing
		}
		if _, err := c.ReadPacket(10 * time.Second); err != nil {
			break // closed
		}
		if time.Now().After(deadline) {
			t.Fatalf("restricted session still open after %d TPM register requests over 10 s", i+1)
		}
	}
	testkit.Await(t, "the session released", func() bool { _, r := s.Broker.Sessions(); return r == 0 })
}
