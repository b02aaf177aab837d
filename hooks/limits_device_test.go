package hooks_test

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
)

// retryAfter returns the retry-after seconds of a response topic, or -1.
func retryAfter(topic string) int {
	_, v, ok := strings.Cut(topic, "&retry-after=")
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return -1
	}
	return n
}

// TestPollsPerDeviceDefault: with the default limits (the cloud's 5 polls
// per 10 s per device) the sixth poll in a row gets 429 errorCode 429001 with
// a retry-after; the budget belongs to the registrationId, so a new
// connection of the same device is still throttled while another device is not.
func TestPollsPerDeviceDefault(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{})
	d := enrollSymmetric(t, s, "sym-polls")
	c := connectSym(t, s, d, true)
	c.Subscribe(1, hooks.ResponseFilter)
	c.Publish(registerTopic+"r", 0, nil)
	topic, body := c.ReadResponse()
	op := decode(t, body)
	if !strings.Contains(topic, "/202/") || op.OperationID == "" {
		t.Fatalf("register: %q %s", topic, body)
	}
	for i := 1; i <= hooks.DefaultPollsPerDevice; i++ {
		c.Publish(pollTopic+fmt.Sprint(i)+"&operationId="+op.OperationID, 0, nil)
		if topic, body := c.ReadResponse(); !strings.Contains(topic, "/200/?$rid="+fmt.Sprint(i)) {
			t.Fatalf("poll %d: %q %s", i, topic, body)
		}
	}
	c.Publish(pollTopic+"over&operationId="+op.OperationID, 0, nil)
	topic, body = c.ReadResponse()
	if !strings.HasPrefix(topic, "$dps/registrations/res/429/?$rid=over&retry-after=") || retryAfter(topic) < 1 {
		t.Fatalf("poll over the limit: %q %s, want 429 with retry-after", topic, body)
	}
	if decode(t, body).ErrorCode != 429001 {
		t.Fatalf("429 body %s", body)
	}
	if ra := retryAfter(topic); ra > int(hooks.DefaultPollWindow/time.Second) {
		t.Fatalf("retry-after %d exceeds the poll window", ra)
	}

	// A fresh connection of the same device shares the device's budget.
	c2 := connectSym(t, s, d, true)
	c2.Subscribe(1, hooks.ResponseFilter)
	c2.Publish(pollTopic+"again&operationId="+op.OperationID, 0, nil)
	if topic, body := c2.ReadResponse(); !strings.Contains(topic, "/429/?$rid=again&retry-after=") {
		t.Fatalf("new connection of a throttled device: %q %s", topic, body)
	}

	// Another device is not affected.
	e := enrollSymmetric(t, s, "sym-polls-other")
	o := connectSym(t, s, e, true)
	o.Subscribe(1, hooks.ResponseFilter)
	o.Publish(pollTopic+"1&operationId=none", 0, nil)
	if topic, body := o.ReadResponse(); !strings.Contains(topic, "/404/?$rid=1") {
		t.Fatalf("other device: %q %s", topic, body)
	}
}

// TestRegistersPerDevice: register requests of one authenticated device are
// limited per registrationId across connections.
func TestRegistersPerDevice(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{HookLimits: hooks.Limits{
		RegistersPerDevice: 2,
		RegisterWindow:     time.Hour,
	}})
	d := enrollSymmetric(t, s, "sym-registers")
	c := connectSym(t, s, d, true)
	c.Subscribe(1, hooks.ResponseFilter)
	for i := 0; i < 2; i++ {
		c.Publish(registerTopic+fmt.Sprint(i), 0, nil)
		if topic, body := c.ReadResponse(); !strings.Contains(topic, "/202/") {
			t.Fatalf("register %d: %q %s", i, topic, body)
		}
	}
	c2 := connectSym(t, s, d, true) // takes over; same device budget
	c2.Subscribe(1, hooks.ResponseFilter)
	c2.Publish(registerTopic+"2", 0, nil)
	topic, body := c2.ReadResponse()
	if !strings.HasPrefix(topic, "$dps/registrations/res/429/?$rid=2&retry-after=") || decode(t, body).ErrorCode != 429001 {
		t.Fatalf("third register: %q %s, want 429 429001", topic, body)
	}
	// Polls have their own budget.
	c2.Publish(pollTopic+"p&operationId=none", 0, nil)
	if topic, body := c2.ReadResponse(); !strings.Contains(topic, "/404/?$rid=p") {
		t.Fatalf("poll after register throttle: %q %s", topic, body)
	}
}

// TestChallengesNotThrottledPerDevice: restricted sessions never spend a
// registrationId's budget, and an outsider asking for challenges under a
// device's id from many connections gets no 429 and does not stop the real
// device from registering.
func TestChallengesNotThrottledPerDevice(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{HookLimits: hooks.Limits{
		RegistersPerDevice:            1,
		RegisterWindow:                time.Hour,
		PollsPerDevice:                1,
		PollWindow:                    time.Hour,
		ChallengesPerConnection:       2,
		ChallengesPerAddressPerMinute: 1000,
		ChallengeBurstPerAddress:      100,
	}})
	d := enrollSymmetric(t, s, "sym-victim")
	body := []byte(`{"tpm":{"endorsementKey":"AAAA","storageRootKey":"AAAA"}}`)
	for conn := 0; conn < 4; conn++ {
		r := mqtttest.Dial(t, s.TCPAddr)
		if code, _ := r.Connect(d.id, username(s, d.id), "", true, 0); code != 0 {
			t.Fatalf("restricted CONNACK %d", code)
		}
		r.Subscribe(1, hooks.ResponseFilter)
		for i := 0; i < 2; i++ {
			r.Publish(registerTopic+fmt.Sprint(i), 0, body)
			topic, resp := r.ReadResponse()
			if strings.Contains(topic, "/429/") || strings.Contains(topic, "/202/") {
				t.Fatalf("restricted request %d/%d: %q %s", conn, i, topic, resp)
			}
		}
		r.Disconnect()
	}
	c := connectSym(t, s, d, true)
	c.Subscribe(1, hooks.ResponseFilter)
	c.Publish(registerTopic+"real", 0, nil)
	topic, resp := c.ReadResponse()
	op := decode(t, resp)
	if !strings.Contains(topic, "/202/?$rid=real") || op.OperationID == "" {
		t.Fatalf("the real device's register after challenge requests under its id: %q %s", topic, resp)
	}
	c.Publish(pollTopic+"p&operationId="+op.OperationID, 0, nil)
	if topic, resp := c.ReadResponse(); !strings.Contains(topic, "/200/?$rid=p") {
		t.Fatalf("the real device's poll: %q %s", topic, resp)
	}
}

// TestSameIDConnectStorm: many concurrent restricted connects under one
// registrationId (anyone may make them) while that device holds an
// authenticated session. mochi's own takeover must never run: no restricted
// session is closed before its answer, and the authenticated session survives.
func TestSameIDConnectStorm(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{Limits: broker.Limits{
		ConnectionsPerAddressPerMinute: -1,
	}, HookLimits: hooks.Limits{
		ChallengesPerAddressPerMinute: -1,
		ChallengesPerMinute:           -1,
		RestrictedSessionsPerAddress:  -1, // 1,000 sessions held from one address
	}})
	d := enrollSymmetric(t, s, "storm-victim")
	auth := connectSym(t, s, d, true)
	auth.Subscribe(1, hooks.ResponseFilter)
	body := []byte(`{"tpm":{"endorsementKey":"AAAA","storageRootKey":"AAAA"}}`)
	const workers, rounds = 50, 20
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		go func() {
			for i := 0; i < rounds; i++ {
				c, err := net.DialTimeout("tcp", s.TCPAddr, 10*time.Second)
				if err != nil {
					errs <- err
					return
				}
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				r := mqtttest.New(t, c)
				code, _, err := r.TryConnect(d.id, username(s, d.id), "", true, 0)
				if err != nil || code != 0 {
					c.Close()
					errs <- fmt.Errorf("restricted CONNACK %d %v", code, err)
					return
				}
				if err := r.SendErr(mqtttest.SubscribePacket(1, 1, hooks.ResponseFilter)); err != nil {
					c.Close()
					errs <- err
					return
				}
				if err := r.SendErr(mqtttest.PublishPacket(registerTopic+"1", 0, 0, body)); err != nil {
					c.Close()
					errs <- err
					return
				}
				var answered bool
				for !answered {
					p, err := r.ReadPacket(20 * time.Second)
					if err != nil {
						c.Close()
						errs <- fmt.Errorf("restricted session closed before its answer: %w", err)
						return
					}
					answered = p.Type() == packets.Publish
				}
				defer c.Close() // held until the worker ends, as an attacker would
			}
			errs <- nil
		}()
	}
	for w := 0; w < workers; w++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	auth.Publish(pollTopic+"alive&operationId=none", 0, nil)
	if topic, resp := auth.ReadResponse(); !strings.Contains(topic, "/404/?$rid=alive") {
		t.Fatalf("authenticated session after the storm: %q %s", topic, resp)
	}
}
