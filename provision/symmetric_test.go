package provision

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

func TestAuthenticateSymmetricIndividual(t *testing.T) {
	e := newEnv(t)
	e.putEnrollment(symmetricEnrollment("dev-1", symKey(1), symKey(2)))
	for name, key := range map[string][]byte{"primary": symKey(1), "secondary": symKey(2)} {
		id, err := e.connect("Dev-1", e.sas("Dev-1", key, "registration"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if id.Method != AuthSymmetricKey || id.RegistrationID != "dev-1" || id.GroupID != "" {
			t.Fatalf("%s: identity %+v", name, id)
		}
	}
	// Without skn (Node SDK style).
	if _, err := e.connect("dev-1", e.sas("dev-1", symKey(1), "")); err != nil {
		t.Fatalf("no skn: %v", err)
	}
}

func TestAuthenticateSymmetricRefusals(t *testing.T) {
	e := newEnv(t)
	e.putEnrollment(symmetricEnrollment("dev-1", symKey(1), symKey(2)))
	e.putEnrollment(symmetricEnrollment("dev-2", symKey(1), symKey(2))) // same keys on purpose
	expired := []byte(attest.SignSAS(symKey(1), attest.RegistrationResource(testScope, "dev-1"), e.clock.Now().Add(-time.Hour), ""))
	for _, tc := range []struct {
		name     string
		c        Connect
		kind     error
		cause    error
		contains string
	}{
		{name: "wrong key", c: Connect{ClientID: "dev-1", Username: username("dev-1"), Password: e.sas("dev-1", symKey(3), "")}, kind: ErrNotAuthorized, cause: attest.ErrSASSignature},
		{name: "expired", c: Connect{ClientID: "dev-1", Username: username("dev-1"), Password: expired}, kind: ErrNotAuthorized, cause: attest.ErrSASExpired},
		{name: "token for another id", c: Connect{ClientID: "dev-2", Username: username("dev-2"), Password: e.sas("dev-1", symKey(1), "")}, kind: ErrNotAuthorized, cause: attest.ErrSASResource},
		{name: "unknown id", c: Connect{ClientID: "dev-9", Username: username("dev-9"), Password: e.sas("dev-9", symKey(1), "")}, kind: ErrNotAuthorized, contains: "no enrollment"},
		{name: "client id mismatch", c: Connect{ClientID: "dev-2", Username: username("dev-1"), Password: e.sas("dev-1", symKey(1), "")}, kind: ErrNotAuthorized, contains: "client id"},
		{name: "other scope", c: Connect{ClientID: "dev-1", Username: "0ne00000B0B/registrations/dev-1/api-version=2021-06-01", Password: e.sas("dev-1", symKey(1), "")}, kind: ErrNotAuthorized, contains: "scope"},
		{name: "bad username", c: Connect{ClientID: "dev-1", Username: "dev-1", Password: e.sas("dev-1", symKey(1), "")}, kind: ErrNotAuthorized, cause: attest.ErrUsernameMalformed},
		{name: "not a SAS", c: Connect{ClientID: "dev-1", Username: username("dev-1"), Password: []byte("hunter2")}, kind: ErrNotAuthorized, cause: attest.ErrSASMalformed},
		{name: "x509", c: Connect{ClientID: "dev-1", Username: username("dev-1"), PeerChain: nil}, kind: nil},
	} {
		id, err := e.svc.Authenticate(e.ctx, tc.c)
		if tc.kind == nil {
			if err != nil || id.Method != AuthRestricted {
				t.Errorf("%s: %+v %v", tc.name, id, err)
			}
			continue
		}
		if !errors.Is(err, tc.kind) || (tc.cause != nil && !errors.Is(err, tc.cause)) || !strings.Contains(err.Error(), tc.contains) {
			t.Errorf("%s: err = %v", tc.name, err)
		}
		if err != nil && strings.Contains(err.Error(), "sig=") {
			t.Errorf("%s: error leaks the token: %v", tc.name, err)
		}
	}
}

func TestAuthenticateSymmetricGroup(t *testing.T) {
	e := newEnv(t)
	groupKey := symKey(9)
	e.putGroup(&store.Group{EnrollmentGroupID: "other", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
		SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: b64(symKey(8)), SecondaryKey: b64(symKey(7))}}}})
	e.putGroup(&store.Group{EnrollmentGroupID: "Fleet", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
		SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: b64(symKey(6)), SecondaryKey: b64(groupKey)}}}})
	// The device derives its key from the id exactly as it spells it.
	devKey := attest.DeriveDeviceKey(groupKey, "Sensor-42")
	id := e.mustConnect("Sensor-42", e.sas("Sensor-42", devKey, "registration"))
	if id.Method != AuthSymmetricKey || id.GroupID != "Fleet" || id.RegistrationID != "sensor-42" {
		t.Fatalf("identity %+v", id)
	}
	// The group key itself never signs.
	if _, err := e.connect("sensor-43", e.sas("sensor-43", groupKey, "")); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("group key signed: %v", err)
	}
	// Another device's derived key does not work for this one.
	if _, err := e.connect("sensor-43", e.sas("sensor-43", devKey, "")); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("sensor-42's key authenticated sensor-43: %v", err)
	}
	// Register and poll: the group is named in the result.
	opID := e.register(id, RegisterRequest{})
	got := e.pollFinal(id, opID)
	st := got.RegistrationState
	if got.Status != "assigned" || st.SymmetricKey == nil || st.SymmetricKey.EnrollmentGroupID != "Fleet" || st.DeviceID != "sensor-42" || st.TPM != nil {
		t.Fatalf("group result %s", encode(t, got))
	}
}

func TestIndividualOverridesGroup(t *testing.T) {
	e := newEnv(t)
	groupKey := symKey(9)
	e.putGroup(&store.Group{EnrollmentGroupID: "fleet", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
		SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: b64(groupKey)}}}})
	e.putEnrollment(symmetricEnrollment("dev-1", symKey(1), nil))
	if _, err := e.connect("dev-1", e.sas("dev-1", attest.DeriveDeviceKey(groupKey, "dev-1"), "")); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("group key accepted despite an individual enrollment: %v", err)
	}
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	if id.GroupID != "" {
		t.Fatalf("identity %+v", id)
	}
	// An individual TPM enrollment also rules the group out.
	e.putEnrollment(&store.Enrollment{RegistrationID: "tpm-1", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationTPM,
		TPM: &store.TPMAttestation{EndorsementKey: "AAAA"}}}})
	if _, err := e.connect("tpm-1", e.sas("tpm-1", attest.DeriveDeviceKey(groupKey, "tpm-1"), "")); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("group key accepted for a TPM enrollment: %v", err)
	}
}

func TestRegisterSymmetricAndPoll(t *testing.T) {
	e := newEnv(t)
	en := symmetricEnrollment("dev-1", symKey(1), symKey(2))
	en.DeviceID = "Device One"
	en.IoTHubHostName = "static-hub.azure-devices.net"
	e.putEnrollment(en)
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))

	payload := json.RawMessage(`{"model":"Zoë-3000","n":1}`)
	opID := e.register(id, RegisterRequest{RegistrationID: "DEV-1", Payload: payload})
	got := e.pollFinal(id, opID)
	m := jsonMap(t, got)
	st := m["registrationState"].(map[string]any)
	for k, want := range map[string]any{
		"registrationId": "dev-1", "assignedHub": "static-hub.azure-devices.net", "deviceId": "Device One",
		"status": "assigned", "substatus": "initialAssignment",
	} {
		if st[k] != want {
			t.Errorf("registrationState.%s = %v, want %v", k, st[k], want)
		}
	}
	for _, k := range []string{"createdDateTimeUtc", "lastUpdatedDateTimeUtc"} {
		ts, _ := st[k].(string)
		if p, err := time.Parse(time.RFC3339, ts); err != nil || p.Location() != time.UTC || !strings.HasSuffix(ts, "Z") {
			t.Errorf("%s = %q: %v", k, ts, err)
		}
	}
	if st["etag"] == "" || st["etag"] == nil {
		t.Errorf("no etag: %v", st)
	}
	if _, ok := st["tpm"]; ok {
		t.Errorf("symmetric result has tpm: %v", st)
	}
	if _, ok := st["symmetricKey"]; ok {
		t.Errorf("individual result names a group: %v", st)
	}
	if p, _ := json.Marshal(st["payload"]); string(p) != `{"model":"Zoë-3000","n":1}` {
		t.Errorf("payload = %s", p)
	}
	wire := encode(t, got)
	if !strings.Contains(wire, `Zo\u00eb-3000`) {
		t.Errorf("payload not ASCII-escaped on the wire: %s", wire)
	}
	rec, err := e.st.GetRegistration(e.ctx, "dev-1")
	if err != nil || string(rec.Payload) != string(payload) || rec.AttestationType != store.AttestationSymmetricKey || len(rec.HubKey) != 0 {
		t.Fatalf("record %+v %v", rec, err)
	}
}

func TestRegisterBodyIDMismatch(t *testing.T) {
	e := newEnv(t)
	e.putEnrollment(symmetricEnrollment("dev-1", symKey(1), nil))
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{RegistrationID: "dev-2"}, "tr"), ErrorCodeBadRequest)
}

func TestPollShapes(t *testing.T) {
	e := newEnv(t)
	e.putEnrollment(symmetricEnrollment("dev-1", symKey(1), nil))
	e.putEnrollment(symmetricEnrollment("dev-2", symKey(2), nil))
	id1 := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	id2 := e.mustConnect("dev-2", e.sas("dev-2", symKey(2), ""))

	// An operation still assigning (as an asynchronous allocation would leave it).
	pending := &store.Operation{ID: "4.00112233445566778899aabbccddeeff", RegistrationID: "dev-1", Status: store.RegistrationAssigning,
		CreatedAt: e.clock.Now(), ExpiresAt: e.clock.Now().Add(time.Hour)}
	if err := e.st.PutOperation(e.ctx, pending); err != nil {
		t.Fatal(err)
	}
	resp := e.svc.Poll(e.ctx, id1, pending.ID, "tr")
	if resp.Status != 202 || resp.RetryAfter < 0 {
		t.Fatalf("assigning poll: %d %v", resp.Status, resp.RetryAfter)
	}
	if got, want := encode(t, resp.Body), `{"operationId":"4.00112233445566778899aabbccddeeff","status":"assigning","registrationState":{"registrationId":"dev-1","status":"assigning"}}`; got != want {
		t.Fatalf("assigning body\n got %s\nwant %s", got, want)
	}

	opID := e.register(id1, RegisterRequest{})
	e.pollFinal(id1, opID)

	// Another device's operation, an unknown one and a malformed one: the same 404.
	var bodies []string
	for _, op := range []string{opID, pending.ID, "4.ffffffffffffffffffffffffffffffff", "../etc/passwd", ""} {
		eb := errorBody(t, e.svc.Poll(e.ctx, id2, op, "tr-x"), ErrorCodeNotFound)
		bodies = append(bodies, eb.Message)
	}
	for _, b := range bodies[1:] {
		if b != bodies[0] {
			t.Fatalf("404 messages differ: %q", bodies)
		}
	}
	// A restricted session may not poll.
	errorBody(t, e.svc.Poll(e.ctx, Identity{RegistrationID: "dev-1", Method: AuthRestricted}, opID, "tr"), ErrorCodeUnauthorized)
	// An expired operation is gone.
	e.clock.Advance(2 * time.Hour)
	errorBody(t, e.svc.Poll(e.ctx, id1, opID, "tr"), ErrorCodeNotFound)
}

func TestRegisterDisabledAndFailed(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Hubs = nil })
	dis := symmetricEnrollment("dev-off", symKey(1), nil)
	dis.ProvisioningStatus = store.StatusDisabled
	e.putEnrollment(dis)
	id := e.mustConnect("dev-off", e.sas("dev-off", symKey(1), ""))
	got := e.pollFinal(id, e.register(id, RegisterRequest{}))
	if got.Status != "disabled" || got.RegistrationState.AssignedHub != "" {
		t.Fatalf("disabled: %s", encode(t, got))
	}

	e.putEnrollment(symmetricEnrollment("dev-nohub", symKey(2), nil))
	id = e.mustConnect("dev-nohub", e.sas("dev-nohub", symKey(2), ""))
	got = e.pollFinal(id, e.register(id, RegisterRequest{}))
	if got.Status != "failed" || got.RegistrationState.ErrorCode != ErrorCodeNoHub || got.RegistrationState.ErrorMessage == "" {
		t.Fatalf("no hub: %s", encode(t, got))
	}

	custom := symmetricEnrollment("dev-custom", symKey(3), nil)
	custom.AllocationPolicy = "custom"
	custom.IoTHubs = []string{"h1"}
	e.putEnrollment(custom)
	id = e.mustConnect("dev-custom", e.sas("dev-custom", symKey(3), ""))
	got = e.pollFinal(id, e.register(id, RegisterRequest{}))
	if got.Status != "failed" || got.RegistrationState.ErrorCode != ErrorCodeCustomAllocationFailed {
		t.Fatalf("custom: %s", encode(t, got))
	}
}

func TestRegisterAfterEnrollmentDeleted(t *testing.T) {
	e := newEnv(t)
	e.putEnrollment(symmetricEnrollment("dev-1", symKey(1), nil))
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	if err := e.st.DeleteEnrollment(e.ctx, "dev-1", ""); err != nil {
		t.Fatal(err)
	}
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{}, "tr"), ErrorCodeUnauthorized)
}

func TestStoreFailureIs500(t *testing.T) {
	e := newEnv(t)
	e.putEnrollment(symmetricEnrollment("dev-1", symKey(1), nil))
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	if err := e.st.Close(); err != nil {
		t.Fatal(err)
	}
	resp := e.svc.Register(e.ctx, id, RegisterRequest{}, "tr")
	eb := errorBody(t, resp, ErrorCodeInternal)
	if resp.RetryAfter <= 0 || strings.Contains(eb.Message, "store") {
		t.Fatalf("500: retry %v message %q", resp.RetryAfter, eb.Message)
	}
	if _, err := e.connect("dev-1", e.sas("dev-1", symKey(1), "")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Authenticate on a closed store: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	e := newEnv(t)
	for name, cfg := range map[string]Config{
		"no scope":     {Store: e.st, ChallengeSecret: symKey(1)},
		"no store":     {IDScope: testScope, ChallengeSecret: symKey(1)},
		"short secret": {IDScope: testScope, Store: e.st, ChallengeSecret: symKey(1)[:31]},
		"empty hub":    {IDScope: testScope, Store: e.st, ChallengeSecret: symKey(1), Hubs: []string{" "}},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
	s, err := New(Config{IDScope: testScope, Store: e.st, ChallengeSecret: symKey(1)})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.ChallengeLifetime != DefaultChallengeLifetime || s.cfg.OperationLifetime != DefaultOperationLifetime ||
		s.retryAfter != DefaultRetryAfter || s.cfg.Rand == nil || s.cfg.Now == nil || s.cfg.Logger == nil {
		t.Fatalf("defaults not applied: %+v", s.cfg)
	}
	s, err = New(Config{IDScope: testScope, Store: e.st, ChallengeSecret: symKey(1), RetryAfter: -1})
	if err != nil || s.retryAfter != 0 {
		t.Fatalf("negative RetryAfter: %v %v", s.retryAfter, err)
	}
}

func TestReprovisionOnHubListChange(t *testing.T) {
	e := newEnv(t)
	en := symmetricEnrollment("dev-1", symKey(1), nil)
	en.AllocationPolicy = "hashed"
	en.IoTHubs = []string{"hub-a"}
	e.putEnrollment(en)
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	if st := e.pollFinal(id, e.register(id, RegisterRequest{})).RegistrationState; st.AssignedHub != "hub-a" {
		t.Fatalf("first: %+v", st)
	}
	// Registering again with the hubs unchanged keeps the hub.
	if st := e.pollFinal(id, e.register(id, RegisterRequest{})).RegistrationState; st.AssignedHub != "hub-a" || st.Substatus != SubstatusReprovisioned {
		t.Fatalf("again: %+v", st)
	}
	// Adding hubs moves the device only to a hub that wins it (as the
	// hashing decides), with the default policy's substatus.
	en.IoTHubs = []string{"hub-a", "hub-b", "hub-c", "hub-d"}
	e.putEnrollment(en)
	want := allocator.Hashed([]allocator.Hub{{Name: "hub-a"}, {Name: "hub-b"}, {Name: "hub-c"}, {Name: "hub-d"}}, "dev-1")
	st := e.pollFinal(id, e.register(id, RegisterRequest{})).RegistrationState
	if st.AssignedHub != want || (want == "hub-a") != (st.Substatus == SubstatusReprovisioned) ||
		(want != "hub-a") != (st.Substatus == SubstatusDeviceDataMigrated) {
		t.Fatalf("after adding hubs: %+v, want %s", st, want)
	}
	// With updateHubAssignment false the device stays even when its hub is gone.
	en.IoTHubs = []string{"hub-c"}
	en.ReprovisionPolicy = &store.ReprovisionPolicy{UpdateHubAssignment: false}
	e.putEnrollment(en)
	if st := e.pollFinal(id, e.register(id, RegisterRequest{})).RegistrationState; st.AssignedHub != want || st.Substatus != SubstatusReprovisioned {
		t.Fatalf("updateHubAssignment=false: %+v", st)
	}
	// By default (no policy, as in DPS) it moves and its data migrates.
	en.ReprovisionPolicy = nil
	e.putEnrollment(en)
	if st := e.pollFinal(id, e.register(id, RegisterRequest{})).RegistrationState; st.AssignedHub != "hub-c" || st.Substatus != SubstatusDeviceDataMigrated {
		t.Fatalf("hub removed: %+v", st)
	}
}
