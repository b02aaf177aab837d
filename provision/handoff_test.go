package provision

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/store"
)

// TestHandoffIdentityBeforeAssigned: with a linked hub that has a
// connection string, a device is answered assigned only once its identity
// exists in the hub (a poll meanwhile is 202 assigning with the
// registration id), with the enrollment's keys and initial twin; a second
// registration keeps the hub (reprovisioned), creates nothing and leaves
// the twin alone.
func TestHandoffIdentityBeforeAssigned(t *testing.T) {
	e := newHubEnv(t, 1)
	hub := e.hubs[0]
	e.link(hub)
	en := symmetricEnrollment("dev-1", symKey(1), symKey(2))
	en.DeviceID = "device-one"
	en.IoTHubs = []string{hub.HostName}
	en.InitialTwin = json.RawMessage(`{"tags":{"site":"north"},"properties":{"desired":{"fw":"1.2"}}}`)
	en.Capabilities = &store.Capabilities{IoTEdge: true}
	e.putEnrollment(en)
	created, release := hub.HoldCreates()
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	resp := e.svc.Register(e.ctx, id, RegisterRequest{Payload: json.RawMessage(`{"fw":"1.0"}`)}, "tr")
	if resp.Status != 202 || resp.RetryAfter != e.svc.cfg.Handoff.RetryAfter {
		t.Fatalf("register: %d %s", resp.Status, encode(t, resp.Body))
	}
	opID := resp.Body.(*OperationStatus).OperationID
	if got := <-created; got != "device-one" {
		t.Fatalf("created %q", got)
	}
	// The hub holds the answer: the registration is not recorded yet.
	e.pollAssigning(id, opID)
	if _, err := e.st.GetRegistration(e.ctx, "dev-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a registration was recorded before the hub answered: %v", err)
	}
	release()
	got := e.awaitFinal(id, opID, 0)
	st := got.RegistrationState
	if got.Status != "assigned" || st.AssignedHub != hub.HostName || st.DeviceID != "device-one" || st.Substatus != SubstatusInitialAssignment ||
		string(st.Payload) != `{"fw":"1.0"}` {
		t.Fatalf("final: %s", encode(t, got))
	}
	ident, ok := hub.Device("device-one")
	if !ok || ident.AuthType != "sas" || ident.PrimaryKey != b64(symKey(1)) || ident.SecondaryKey != b64(symKey(2)) || !ident.IoTEdge {
		t.Fatalf("hub identity: %+v", ident)
	}
	tags, desired, _ := hub.Twin("device-one")
	if !reflect.DeepEqual(tags, map[string]any{"site": "north"}) || !reflect.DeepEqual(desired, map[string]any{"fw": "1.2"}) {
		t.Fatalf("twin: %v %v", tags, desired)
	}
	rec, err := e.st.GetRegistration(e.ctx, "dev-1")
	if err != nil || rec.Status != store.RegistrationAssigned || rec.AssignedHub != hub.HostName {
		t.Fatalf("record: %+v %v", rec, err)
	}
	if n, _ := e.st.CountJobs(e.ctx); n != 0 {
		t.Fatalf("%d jobs left", n)
	}
	// The device changes its desired properties at the hub; registering
	// again keeps the hub and the twin.
	hub.AddDevice("device-one", b64(symKey(1)), b64(symKey(2)), map[string]any{"site": "south"}, nil)
	hub.SetStatus("device-one", "enabled")
	id = e.mustConnect("dev-1", e.sas("dev-1", symKey(2), ""))
	got = e.awaitFinal(id, e.register(id, RegisterRequest{}), 0)
	if got.RegistrationState.Substatus != SubstatusReprovisioned || got.RegistrationState.AssignedHub != hub.HostName {
		t.Fatalf("again: %s", encode(t, got))
	}
	if tags, _, _ := hub.Twin("device-one"); tags["site"] != "south" {
		t.Fatalf("a re-registration on the same hub rewrote the twin: %v", tags)
	}
	if n := hub.Creates("device-one"); n != 1 {
		t.Fatalf("created %d times", n)
	}
}

// TestHandoffCredentials: a group's device gets the keys derived from the
// group's keys (from the id as the device spells it); a TPM device its hub
// key, the one its TPM receives; an X.509 device its certificate's
// thumbprint, or certificateAuthority where the linked hub asks for it.
func TestHandoffCredentials(t *testing.T) {
	e := newHubEnv(t, 2)
	h1, h2 := e.hubs[0], e.hubs[1]
	e.link(h1)
	ca2 := e.putHub(&store.LinkedHub{Name: h2.HostName, ConnectionString: h2.ConnectionString, X509Identity: store.X509CertificateAuthority})
	_ = ca2

	t.Run("group", func(t *testing.T) {
		g := &store.Group{EnrollmentGroupID: "fleet", EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
				PrimaryKey: b64(symKey(7)), SecondaryKey: b64(symKey(8))}},
			IoTHubHostName: h1.HostName}}
		e.putGroup(g)
		dk := deriveKey(symKey(7), "Sensor-A")
		id := e.mustConnect("Sensor-A", e.sas("Sensor-A", dk, ""))
		got := e.awaitFinal(id, e.register(id, RegisterRequest{}), 0)
		if got.Status != "assigned" || got.RegistrationState.DeviceID != "sensor-a" {
			t.Fatalf("%s", encode(t, got))
		}
		ident, _ := h1.Device("sensor-a")
		if ident.PrimaryKey != b64(dk) || ident.SecondaryKey != b64(deriveKey(symKey(8), "Sensor-A")) {
			t.Fatalf("group device identity: %+v", ident)
		}
	})

	t.Run("tpm", func(t *testing.T) {
		d := newTPMDevice(t, devtpm.ECCP256, devtpm.SRKECCP256)
		regID := d.registrationID()
		en := tpmEnrollment(regID, d.ekPublic())
		en.IoTHubHostName = h1.HostName
		e.putEnrollment(en)
		id := e.tpmLogin(d, regID)
		got := e.awaitFinal(id, e.register(id, RegisterRequest{TPM: d.keys()}), 0)
		if got.Status != "assigned" || got.RegistrationState.TPM == nil {
			t.Fatalf("%s", encode(t, got))
		}
		rec, err := e.st.GetRegistration(e.ctx, regID)
		if err != nil || len(rec.HubKey) != HubKeySize {
			t.Fatalf("record %+v %v", rec, err)
		}
		// The TPM holds the key the hub identity has.
		hubKeyMAC(t, d, got.RegistrationState.TPM.AuthenticationKey, rec.HubKey)
		ident, _ := h1.Device(regID)
		if ident.AuthType != "sas" || ident.PrimaryKey != base64.StdEncoding.EncodeToString(rec.HubKey) || ident.SecondaryKey == "" || ident.SecondaryKey == ident.PrimaryKey {
			t.Fatalf("TPM identity: %+v", ident)
		}
	})

	t.Run("x509", func(t *testing.T) {
		dev := e.selfSigned("Cam-1")
		en := x509Enrollment("cam-1", withCert(b64DER(dev.cert)), nil)
		en.IoTHubHostName = h1.HostName
		e.putEnrollment(en)
		id, err := e.connectX509("cam-1", dev.cert)
		if err != nil {
			t.Fatal(err)
		}
		if got := e.awaitFinal(id, e.register(id, RegisterRequest{}), 0); got.Status != "assigned" {
			t.Fatalf("%s", encode(t, got))
		}
		if ident, _ := h1.Device("cam-1"); ident.AuthType != "selfSigned" || ident.PrimaryThumbprint != thumbprint256(dev.cert) {
			t.Fatalf("x509 identity: %+v", ident)
		}
		now := e.clock.Now()
		root, err := devca.NewRootCA("fleet root", now, 24*time.Hour, 0)
		if err != nil {
			t.Fatal(err)
		}
		g := x509Group("cams", withCert(string(root.CertPEM())), nil)
		g.IoTHubHostName = h2.HostName
		e.putGroup(g)
		leaf := e.issueCert(root, "cam-2")
		id, err = e.connectX509("cam-2", leaf.cert)
		if err != nil {
			t.Fatal(err)
		}
		if got := e.awaitFinal(id, e.register(id, RegisterRequest{}), 0); got.Status != "assigned" {
			t.Fatalf("%s", encode(t, got))
		}
		if ident, _ := h2.Device("cam-2"); ident.AuthType != "certificateAuthority" {
			t.Fatalf("CA identity: %+v", ident)
		}
	})
}

// TestHandoffThrottled: a hub that answers 429 for a while delays the
// registration (retried with backoff, its Retry-After honoured) and then
// assigns it; the device is created once.
func TestHandoffThrottled(t *testing.T) {
	e := newHubEnv(t, 1)
	hub := e.hubs[0]
	e.link(hub)
	en := symmetricEnrollment("dev-1", symKey(1), nil)
	en.IoTHubHostName = hub.HostName
	e.putEnrollment(en)
	hub.Throttle(4, 2*time.Second)
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	opID := e.register(id, RegisterRequest{})
	testkit.Await(t, "the first throttled attempt", func() bool { return len(hub.Requests()) >= 1 })
	e.pollAssigning(id, opID)
	got := e.awaitFinal(id, opID, time.Second)
	if got.Status != "assigned" {
		t.Fatalf("%s", encode(t, got))
	}
	throttled := 0
	for _, r := range hub.Requests() {
		if r.Status == 429 {
			throttled++
		}
	}
	if throttled != 4 || hub.Creates("dev-1") != 1 {
		t.Fatalf("throttled %d, created %d", throttled, hub.Creates("dev-1"))
	}
}

// TestHandoffHubDown: a hub that stays down until the hand-off timeout
// fails the registration with ErrorCodeHubUnavailable and a message naming
// the hub; the record says failed, never assigned.
func TestHandoffHubDown(t *testing.T) {
	e := newHubEnv(t, 1)
	hub := e.hubs[0]
	e.link(hub)
	en := symmetricEnrollment("dev-1", symKey(1), nil)
	en.IoTHubHostName = hub.HostName
	e.putEnrollment(en)
	hub.SetDown(true)
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	opID := e.register(id, RegisterRequest{})
	got := e.awaitFinal(id, opID, 5*time.Second)
	st := got.RegistrationState
	if got.Status != "failed" || st.ErrorCode != ErrorCodeHubUnavailable || !strings.Contains(st.ErrorMessage, hub.HostName) || st.AssignedHub != "" {
		t.Fatalf("%s", encode(t, got))
	}
	rec, err := e.st.GetRegistration(e.ctx, "dev-1")
	if err != nil || rec.Status != store.RegistrationFailed || rec.AssignedHub != "" || rec.ErrorCode != ErrorCodeHubUnavailable {
		t.Fatalf("record: %+v %v", rec, err)
	}
	if _, ok := hub.Device("dev-1"); ok {
		t.Fatal("the device exists in the hub")
	}
}

// TestHandoffHubRefuses: a hub that refuses the identity for good (a
// wrong connection string) fails the registration at once with
// ErrorCodeHubRefused.
func TestHandoffHubRefuses(t *testing.T) {
	e := newHubEnv(t, 1)
	hub := e.hubs[0]
	cs := strings.Replace(hub.ConnectionString, "SharedAccessKey=", "SharedAccessKey=AAAA", 1)
	e.putHub(&store.LinkedHub{Name: hub.HostName, ConnectionString: cs})
	en := symmetricEnrollment("dev-1", symKey(1), nil)
	en.IoTHubHostName = hub.HostName
	e.putEnrollment(en)
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	got := e.awaitFinal(id, e.register(id, RegisterRequest{}), 0)
	if got.Status != "failed" || got.RegistrationState.ErrorCode != ErrorCodeHubRefused || !strings.Contains(got.RegistrationState.ErrorMessage, "401") {
		t.Fatalf("%s", encode(t, got))
	}
}

// TestHandoffReprovision: moving hubs under each policy. Migrate copies
// the twin's tags and desired properties from the hub left (as the device
// changed them there) and deletes the identity there; reset starts from
// the initial twin and deletes too; never keeps the device where it is.
func TestHandoffReprovision(t *testing.T) {
	e := newHubEnv(t, 2)
	a, b := e.hubs[0], e.hubs[1]
	e.link(a)
	e.link(b)
	en := symmetricEnrollment("dev-1", symKey(1), symKey(2))
	en.IoTHubHostName = a.HostName
	en.InitialTwin = json.RawMessage(`{"tags":{"v":"initial"}}`)
	e.putEnrollment(en)
	register := func() *RegistrationState {
		id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
		return e.awaitFinal(id, e.register(id, RegisterRequest{}), 0).RegistrationState
	}
	if st := register(); st.AssignedHub != a.HostName || st.Substatus != SubstatusInitialAssignment {
		t.Fatalf("first: %+v", st)
	}
	// The device's data changes at hub a.
	a.AddDevice("dev-1", b64(symKey(1)), b64(symKey(2)), map[string]any{"v": "changed at a"}, map[string]any{"mode": "eco"})
	en.IoTHubHostName = b.HostName
	en.ReprovisionPolicy = &store.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true}
	e.putEnrollment(en)
	if st := register(); st.AssignedHub != b.HostName || st.Substatus != SubstatusDeviceDataMigrated {
		t.Fatalf("migrate: %+v", st)
	}
	tags, desired, ok := b.Twin("dev-1")
	if !ok || tags["v"] != "changed at a" || desired["mode"] != "eco" {
		t.Fatalf("migrated twin: %v %v", tags, desired)
	}
	if _, ok := a.Device("dev-1"); ok {
		t.Fatal("still in the hub it left")
	}
	en.IoTHubHostName = a.HostName
	en.ReprovisionPolicy = &store.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: false}
	e.putEnrollment(en)
	if st := register(); st.AssignedHub != a.HostName || st.Substatus != SubstatusDeviceDataReset {
		t.Fatalf("reset: %+v", st)
	}
	if tags, desired, _ := a.Twin("dev-1"); tags["v"] != "initial" || len(desired) != 0 {
		t.Fatalf("reset twin: %v %v", tags, desired)
	}
	if _, ok := b.Device("dev-1"); ok {
		t.Fatal("still in the hub it left after reset")
	}
	en.IoTHubHostName = b.HostName
	en.ReprovisionPolicy = &store.ReprovisionPolicy{}
	e.putEnrollment(en)
	if st := register(); st.AssignedHub != a.HostName || st.Substatus != SubstatusReprovisioned {
		t.Fatalf("never: %+v", st)
	}
	if _, ok := b.Device("dev-1"); ok {
		t.Fatal("never moved the device")
	}
}

// TestHandoffOutboxFull: beyond MaxPending jobs, registers are answered
// 429 with retry-after, and nothing is written for them.
func TestHandoffOutboxFull(t *testing.T) {
	e := newHubEnv(t, 1, func(c *Config) { c.Handoff.MaxPending = 1 })
	hub := e.hubs[0]
	e.link(hub)
	created, release := hub.HoldCreates()
	defer release()
	for _, d := range []string{"dev-1", "dev-2"} {
		en := symmetricEnrollment(d, symKey(1), nil)
		en.IoTHubHostName = hub.HostName
		e.putEnrollment(en)
	}
	id1 := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	e.register(id1, RegisterRequest{})
	<-created
	id2 := e.mustConnect("dev-2", e.sas("dev-2", symKey(1), ""))
	resp := e.svc.Register(e.ctx, id2, RegisterRequest{}, "tr")
	errorBody(t, resp, ErrorCodeThrottled)
	if resp.RetryAfter <= 0 {
		t.Fatalf("429 without retry-after: %v", resp.RetryAfter)
	}
	if n, _ := e.st.CountJobs(e.ctx); n != 1 {
		t.Fatalf("%d jobs", n)
	}
}

// TestHandoffLeaseTakeover: a worker that stalls past its lease (here
// inside the hub's answer to its create) loses the job to another service
// on the same store, which finishes it without creating the device again;
// the stalled worker's late outcome is refused and changes nothing.
func TestHandoffLeaseTakeover(t *testing.T) {
	logs := &syncBuffer{}
	e := newHubEnv(t, 1, func(c *Config) {
		c.Handoff.Lease = 10 * time.Second
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	hub := e.hubs[0]
	e.link(hub)
	en := symmetricEnrollment("dev-1", symKey(1), nil)
	en.IoTHubHostName = hub.HostName
	e.putEnrollment(en)
	other, err := New(e.svc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	created, release := hub.HoldCreates()
	defer release()
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	opID := e.register(id, RegisterRequest{})
	<-created // the first service's worker waits for the hub's answer
	e.clock.Advance(11 * time.Second)
	octx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = other.Run(octx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	got := e.awaitFinal(id, opID, 0)
	if got.Status != "assigned" || hub.Creates("dev-1") != 1 {
		t.Fatalf("%s, created %d", encode(t, got), hub.Creates("dev-1"))
	}
	rec, err := e.st.GetRegistration(e.ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	release() // the stalled worker hears the hub and tries to finish
	testkit.Await(t, "the stalled worker's outcome to be refused", func() bool {
		return strings.Contains(logs.String(), "taken over by another worker")
	})
	after, err := e.st.GetRegistration(e.ctx, "dev-1")
	if err != nil || after.ETag != rec.ETag || hub.Creates("dev-1") != 1 {
		t.Fatalf("the stalled worker wrote: etag %s -> %s (%v), created %d", rec.ETag, after.ETag, err, hub.Creates("dev-1"))
	}
}

// TestHandoffWithoutIOStaysSynchronous: a hub linked without a connection
// string (allocation only) takes the synchronous path: the operation is
// final before the register returns, and no job is written.
func TestHandoffWithoutIOStaysSynchronous(t *testing.T) {
	e := newHubEnv(t, 0)
	e.putHub(&store.LinkedHub{Name: "alloc-only.example.net", AllocationWeight: 5})
	e.putEnrollment(symmetricEnrollment("dev-1", symKey(1), nil))
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	opID := e.register(id, RegisterRequest{})
	if n, _ := e.st.CountJobs(e.ctx); n != 0 {
		t.Fatalf("%d jobs for a registration without hand-off", n)
	}
	got := e.pollFinal(id, opID)
	if got.Status != "assigned" || !containsFold(append([]string{"alloc-only.example.net"}, e.svc.cfg.Hubs...), got.RegistrationState.AssignedHub) {
		t.Fatalf("%s", encode(t, got))
	}
	if !bytes.Equal([]byte(got.RegistrationState.Substatus), []byte(SubstatusInitialAssignment)) {
		t.Fatal(got.RegistrationState.Substatus)
	}
}
