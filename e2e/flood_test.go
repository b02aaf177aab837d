package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
	"github.com/tpmdps/dpsd/store"
)

const (
	registerTopic  = "$dps/registrations/PUT/iotdps-register/?$rid="
	pollTopic      = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid="
	responseFilter = "$dps/registrations/res/#"
	apiVersion     = "2019-03-31"
	// floodAddresses is how many loopback source addresses a flood spreads over.
	floodAddresses = 50
)

// floodServer starts an in-process server with the default limits, except a
// short CONNECT deadline and write timeout so that the test does not wait long.
func floodServer(t *testing.T) *dpsdtest.Server {
	t.Helper()
	return dpsdtest.Start(t, dpsdtest.Options{
		ConnectTimeout: 2 * time.Second,
		RetryAfter:     -1,
		Limits:         broker.Limits{WriteTimeout: 2 * time.Second},
	})
}

// symDevice is an enrolled symmetric key device.
type symDevice struct {
	id  string
	key []byte
}

func enrollSym(t testing.TB, srv *dpsdtest.Server, id string) symDevice {
	t.Helper()
	key := randomKey(t, 32)
	_, err := srv.Store.PutEnrollment(context.Background(), &store.Enrollment{
		RegistrationID: id,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
				SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(key)}},
			IoTHubHostName:     dpsdtest.DefaultHub,
			ProvisioningStatus: store.StatusEnabled,
		},
	}, "")
	if err != nil {
		t.Fatalf("PutEnrollment: %v", err)
	}
	return symDevice{id: id, key: key}
}

// deviceConfig is a device.Config over plain TCP to srv.
func deviceConfig(t testing.TB, srv *dpsdtest.Server, id string, att device.Attestation) device.Config {
	t.Helper()
	host, port, err := net.SplitHostPort(srv.TCPAddr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return device.Config{
		Host: host, Port: p, Transport: device.TransportTCP, IDScope: srv.IDScope,
		RegistrationID: id, Attestation: att, Timeout: 60 * time.Second,
		Backoff: device.Backoff{Initial: 200 * time.Millisecond, Max: 2 * time.Second, MaxAttempts: 30},
	}
}

// provisionSym provisions d and fails unless it is assigned.
func provisionSym(t testing.TB, srv *dpsdtest.Server, d symDevice) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	provisionOK(t, ctx, deviceConfig(t, srv, d.id, &device.SymmetricKey{Key: d.key}))
}

// during runs fn in a goroutine and returns a function that waits for it and
// reports its error.
func during(fn func() error) func() error {
	ch := make(chan error, 1)
	go func() { ch <- fn() }()
	return func() error { return <-ch }
}

// provisionSymErr provisions d and returns an error unless it is assigned.
func provisionSymErr(srv *dpsdtest.Server, cfg device.Config) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := device.Provision(ctx, cfg)
	if err != nil {
		return err
	}
	if res.Status != device.StatusAssigned {
		return fmt.Errorf("status %q", res.Status)
	}
	return nil
}

// TestFloodSilentConnections: 5,000 connections that never send CONNECT.
// The server holds them within bounded goroutines and memory, closes every
// one at the CONNECT deadline, and a real device provisions during and after.
func TestFloodSilentConnections(t *testing.T) {
	const n = 5000
	raiseFileLimit(t, 2*n+1000)
	srv := floodServer(t)
	d := enrollSym(t, srv, "flood-silent-device")
	base := sample()

	conns := make([]net.Conn, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var dialErrs atomic.Int64
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, err := dialFrom(floodIP(i, floodAddresses), srv.TCPAddr)
				if err != nil {
					dialErrs.Add(1)
					continue
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	if e := dialErrs.Load(); e > 0 {
		t.Fatalf("%d of %d flood dials failed", e, n)
	}
	peak := sample()
	t.Logf("with %d silent connections: %v (baseline %v)", n, peak, base)
	if peak.goroutines > base.goroutines+3*n+200 {
		t.Fatalf("%d goroutines for %d silent connections", peak.goroutines-base.goroutines, n)
	}
	if peak.heap > base.heap+256<<20 {
		t.Fatalf("heap grew by %d MiB for %d silent connections", (peak.heap-base.heap)>>20, n)
	}
	provisionSym(t, srv, d) // during: the silent connections are all still open

	// The server closes every silent connection at the CONNECT deadline.
	var open atomic.Int64
	next.Store(0)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1)
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c := conns[i]
				_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
				_, err := c.Read(buf)
				var ne net.Error
				if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
					open.Add(1)
				}
				_ = c.Close()
			}
		}()
	}
	wg.Wait()
	if o := open.Load(); o > 0 {
		t.Fatalf("%d silent connections were not closed by the server", o)
	}
	provisionSym(t, srv, d) // after
	expectBaseline(t, base)
}

// tpmDevice returns the simulator's attestation, its registration id and
// the register body fields (EK and SRK) a flooder who has seen them can send.
func tpmDevice(t testing.TB) (*device.TPM, string, []byte) {
	t.Helper()
	att := &device.TPM{Device: tpmsim.Open(t)}
	ctx := context.Background()
	ek, err := att.EndorsementKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := attest.RegistrationID(ek)
	fields, err := att.RegisterFields(ctx, device.Session{RegistrationID: id})
	if err != nil {
		t.Fatal(err)
	}
	fields["registrationId"] = id
	body, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	return att, id, body
}

// enrollTPMDevice enrolls the simulator's EK under id.
func enrollTPMDevice(t testing.TB, srv *dpsdtest.Server, att *device.TPM, id string) {
	t.Helper()
	ek, err := att.EndorsementKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = srv.Store.PutEnrollment(context.Background(), &store.Enrollment{
		RegistrationID: id,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationTPM,
				TPM: &store.TPMAttestation{EndorsementKey: base64.StdEncoding.EncodeToString(ek)}},
			IoTHubHostName:     dpsdtest.DefaultHub,
			ProvisioningStatus: store.StatusEnabled,
		},
	}, "")
	if err != nil {
		t.Fatalf("PutEnrollment: %v", err)
	}
}

// TestFloodRestrictedChallenges: 2,000 restricted sessions, all held open at
// once, ask for the real TPM device's challenge with its EK and SRK (anyone
// who has seen them can). The total cap admits 1,000 (the rest get CONNACK 3,
// "server unavailable"); every admitted one is answered with a challenge
// (401) or 429 with retry-after; nothing is limited per registrationId.
// Goroutines and heap stay bounded, an authenticated device provisions while
// the cap is full, and the TPM device, which starts while the cap is full
// and retries CONNACK 3, provisions once the flood lets go, and again after.
func TestFloodRestrictedChallenges(t *testing.T) {
	const (
		n       = 2000
		workers = 100
	)
	raiseFileLimit(t, 3*n+1000)
	srv := floodServer(t)
	att, id, body := tpmDevice(t)
	enrollTPMDevice(t, srv, att, id)
	sym := enrollSym(t, srv, "flood-restricted-sym")
	base := sample()

	var next, challenges, throttled, refused atomic.Int64
	var bad atomic.Value
	var held sync.Map // int -> net.Conn, admitted sessions kept open
	var wg sync.WaitGroup
	user := srv.IDScope + "/registrations/" + id + "/api-version=" + apiVersion
	flood := func(i int) error {
		c, err := dialFrom(floodIP(i, 100), srv.TCPAddr)
		if err != nil {
			return err
		}
		keep := false
		defer func() {
			if !keep {
				c.Close()
			}
		}()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		r := bufio.NewReader(c)
		if _, err := c.Write(mqtttest.Encode(mqtttest.ConnectPacket(id, user, ""))); err != nil {
			return err
		}
		ack, err := mqtttest.ReadPacket(r, mqtttest.V311)
		if err != nil || ack.Type() != packets.Connack {
			return fmt.Errorf("CONNACK: %v %v", ack, err)
		}
		if ack.ReasonCode == 3 { // restricted session cap: server unavailable
			refused.Add(1)
			return nil
		}
		if ack.ReasonCode != 0 {
			return fmt.Errorf("CONNACK code %d", ack.ReasonCode)
		}
		if _, err := c.Write(append(mqtttest.Encode(mqtttest.SubscribePacket(1, 1, responseFilter)), mqtttest.Encode(mqtttest.PublishPacket(registerTopic+"1", 0, 0, body))...)); err != nil {
			return err
		}
		topic, payload, err := readPublish(r)
		if err != nil {
			return fmt.Errorf("waiting for the answer to the challenge request: %w", err)
		}
		switch statusOf(topic) {
		case 401:
			var ch struct{ AuthenticationKey, KeyName string }
			if json.Unmarshal(payload, &ch) != nil || ch.AuthenticationKey == "" || ch.KeyName == "" {
				return fmt.Errorf("401 without a challenge: %s", payload)
			}
			challenges.Add(1)
		case 429:
			if !containsRetryAfter(topic) {
				return fmt.Errorf("429 without retry-after: %q", topic)
			}
			throttled.Add(1)
		default:
			return fmt.Errorf("unexpected answer %q %s", topic, payload)
		}
		keep = true
		held.Store(i, c)
		return nil
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := flood(i); err != nil {
					bad.CompareAndSwap(nil, fmt.Errorf("session %d: %w", i, err))
				}
			}
		}()
	}
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
	peak := sample()
	_, restricted := srv.Broker.Sessions()
	t.Logf("%d sessions: %d challenges, %d throttled (429), %d refused at the session cap; %d held; %v (baseline %v)",
		n, challenges.Load(), throttled.Load(), refused.Load(), restricted, peak, base)
	if challenges.Load()+throttled.Load()+refused.Load() != n || challenges.Load() == 0 {
		t.Fatalf("answers do not add up")
	}
	if admitted := challenges.Load() + throttled.Load(); admitted != hooks.DefaultRestrictedSessions || restricted != hooks.DefaultRestrictedSessions {
		t.Fatalf("%d sessions admitted, %d live; the cap is %d", admitted, restricted, hooks.DefaultRestrictedSessions)
	}
	if peak.goroutines > base.goroutines+4*hooks.DefaultRestrictedSessions+200 {
		t.Fatalf("%d goroutines with %d restricted sessions (baseline %d)", peak.goroutines, restricted, base.goroutines)
	}
	if peak.heap > base.heap+256<<20 {
		t.Fatalf("heap grew by %d MiB for %d restricted sessions", (peak.heap-base.heap)>>20, restricted)
	}

	// The TPM device starts while the cap is full (CONNACK 3, retried).
	tpmDone := during(func() error { return provisionSymErr(srv, deviceConfig(t, srv, id, att)) })
	// An authenticated device is not affected by the full cap.
	provisionSym(t, srv, sym)
	held.Range(func(_, c any) bool { c.(net.Conn).Close(); return true })
	if err := tpmDone(); err != nil {
		t.Fatalf("TPM device started during the flood: %v", err)
	}
	testkit.AwaitWithin(t, 10*time.Second, "restricted sessions released", func() bool { _, r := srv.Broker.Sessions(); return r == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	provisionOK(t, ctx, deviceConfig(t, srv, id, att)) // after
	expectBaseline(t, base)
}

func containsRetryAfter(topic string) bool {
	for i := 0; i+len("&retry-after=") <= len(topic); i++ {
		if topic[i:i+len("&retry-after=")] == "&retry-after=" {
			return true
		}
	}
	return false
}

// TestFloodBadSAS: 500 connects with bad SAS tokens from 10 addresses, most
// of them under the real device's registrationId: each address's first
// refusals get CONNACK 5 from the service, and once it has spent its budget
// of failed logins (20) the rest get CONNACK 3 without reaching the service;
// the device, from another address, provisions during and after (a bad token
// never locks its id out).
func TestFloodBadSAS(t *testing.T) {
	const n = 500
	raiseFileLimit(t, 4096)
	srv := floodServer(t)
	d := enrollSym(t, srv, "flood-badsas-device")
	base := sample()
	resource := attest.RegistrationResource(srv.IDScope, d.id)
	wrongKey := randomKey(t, 32)

	var next, budgetRefusals atomic.Int64
	var bad atomic.Value
	var wg sync.WaitGroup
	attempt := func(i int) error {
		id, tok := d.id, ""
		switch i % 4 {
		case 0: // signed with a wrong key
			tok = attest.SignSAS(wrongKey, resource, time.Now().Add(time.Hour), "registration")
		case 1: // expired, right key
			tok = attest.SignSAS(d.key, resource, time.Now().Add(-time.Hour), "registration")
		case 2: // garbage
			tok = "SharedAccessSignature sr=" + resource + "&sig=%%%&se=x"
		case 3: // unknown id
			id = fmt.Sprintf("unknown-%d", i)
			tok = attest.SignSAS(wrongKey, attest.RegistrationResource(srv.IDScope, id), time.Now().Add(time.Hour), "")
		}
		c, err := dialFrom(floodIP(i, 10), srv.TCPAddr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(mqtttest.Encode(mqtttest.ConnectPacket(id, srv.IDScope+"/registrations/"+id+"/api-version="+apiVersion, tok))); err != nil {
			return err
		}
		ack, err := mqtttest.ReadPacket(bufio.NewReader(c), mqtttest.V311)
		if err != nil || ack.Type() != packets.Connack || (ack.ReasonCode != 5 && ack.ReasonCode != 3) {
			return fmt.Errorf("want CONNACK 5 (or 3 once the address's budget is spent), got %v %v", ack, err)
		}
		if ack.ReasonCode == 3 {
			budgetRefusals.Add(1)
		}
		return nil
	}
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := attempt(i); err != nil {
					bad.CompareAndSwap(nil, fmt.Errorf("attempt %d: %w", i, err))
				}
			}
		}()
	}
	done := during(func() error {
		return provisionSymErr(srv, deviceConfig(t, srv, d.id, &device.SymmetricKey{Key: d.key}))
	})
	wg.Wait()
	if err := done(); err != nil {
		t.Fatalf("device during the flood: %v", err)
	}
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
	// 50 attempts per address: at least the burst of each reached the
	// service, and the budget stopped some before it.
	if b := budgetRefusals.Load(); b == 0 || b > n-10*hooks.DefaultAuthFailureBurstPerAddress {
		t.Fatalf("%d of %d attempts refused by the failed-login budget", b, n)
	}
	t.Logf("%d of %d attempts refused by the failed-login budget before the service", budgetRefusals.Load(), n)
	provisionSym(t, srv, d)
	expectBaseline(t, base)
}

// TestSlowReader: an authenticated client subscribes, sends requests as fast
// as it can and never reads an answer. The server answers on the client's
// own read goroutine, so nothing piles up in the server's memory: the
// answers fill the socket buffers, the next write times out and the server
// drops the client, without blocking anyone: other devices provision during
// and after, and its resources are released.
func TestSlowReader(t *testing.T) {
	raiseFileLimit(t, 4096)
	srv := floodServer(t)
	slow := enrollSym(t, srv, "slow-reader")
	d := enrollSym(t, srv, "slow-reader-neighbour")
	base := sample()

	raw, err := dialFrom(floodIP(0, 1), srv.TCPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// The default receive buffer: a tiny one makes the client's own kernel
	// drop the server's segments (and the ACKs they carry), and the
	// connection then crawls in retransmission backoff with the server idle.
	c := raw.(*net.TCPConn)
	tok := attest.SignSAS(slow.key, attest.RegistrationResource(srv.IDScope, slow.id), time.Now().Add(time.Hour), "registration")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(mqtttest.Encode(mqtttest.ConnectPacket(slow.id, srv.IDScope+"/registrations/"+slow.id+"/api-version="+apiVersion, tok))); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if ack, err := mqtttest.ReadPacket(r, mqtttest.V311); err != nil || ack.Type() != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %v %v", ack, err)
	}
	testkit.AwaitWithin(t, 10*time.Second, "the slow reader's session", func() bool { n, _ := srv.Broker.Sessions(); return n == 1 })
	if _, err := c.Write(mqtttest.Encode(mqtttest.SubscribePacket(1, 1, responseFilter))); err != nil {
		t.Fatal(err)
	}
	// From here on nothing is read. Each request is a poll with a large body
	// (ignored by the server) so the client's writes stay cheap to produce.
	done := during(func() error {
		return provisionSymErr(srv, deviceConfig(t, srv, d.id, &device.SymmetricKey{Key: d.key}))
	})
	// The server answers on the connection's read goroutine: the answers
	// pile up in the kernel's socket buffers until they are full, then the
	// server's write times out (2 s here) and it drops the connection,
	// which ends this loop. Nothing accumulates in the server's memory.
	sent, dropped := 0, false
	_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	for i := 0; i < 2_000_000; i++ {
		var pk []byte
		if i%2 == 0 {
			pk = mqtttest.Encode(mqtttest.PublishPacket(registerTopic+strconv.Itoa(i), 0, 0, nil))
		} else {
			pk = mqtttest.Encode(mqtttest.PublishPacket(pollTopic+strconv.Itoa(i)+"&operationId=none", 0, 0, nil))
		}
		if _, err := c.Write(pk); err != nil {
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("after %d requests a write blocked for 30 s: the server neither read nor dropped the slow reader", sent)
			}
			dropped = true // the server closed the connection: it dropped the slow reader
			break
		}
		sent++
	}
	if !dropped {
		t.Fatalf("the slow reader wrote %d requests without being dropped", sent)
	}
	if err := done(); err != nil {
		t.Fatalf("neighbour during the slow reader: %v", err)
	}
	testkit.AwaitWithin(t, 30*time.Second, "the server to drop the slow reader", func() bool {
		n, _ := srv.Broker.Sessions()
		return n == 0
	})
	t.Logf("the slow reader sent %d requests before it was dropped", sent)
	provisionSym(t, srv, d)
	expectBaseline(t, base)
}
