package provision

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/bolt"
)

const testScope = "0ne00000A0A"

// env is a service on a real bbolt store in a temporary directory.
type env struct {
	t     testing.TB
	svc   *Service
	st    *bolt.Store
	clock *testkit.Clock
	ctx   context.Context
}

func newEnv(t testing.TB, mods ...func(*Config)) *env {
	t.Helper()
	clock := testkit.NewClock(time.Now().UTC().Truncate(time.Second))
	st, err := bolt.Open(filepath.Join(t.TempDir(), "dps.db"), bolt.Options{Timeout: 5 * time.Second, Now: clock.Now})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	cfg := Config{
		IDScope:         testScope,
		Store:           st,
		ChallengeSecret: bytes.Repeat([]byte{0x5a}, 32),
		Hubs:            []string{"hub-1.azure-devices.net", "hub-2.azure-devices.net"},
		Now:             clock.Now,
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, m := range mods {
		m(&cfg)
	}
	svc, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return &env{t: t, svc: svc, st: st, clock: clock, ctx: ctx}
}

func username(regID string) string {
	return testScope + "/registrations/" + regID + "/api-version=2021-06-01&ClientVersion=test%2F1.0"
}

// sas signs a device token for regID with key, valid for an hour.
func (e *env) sas(regID string, key []byte, keyName string) []byte {
	return []byte(attest.SignSAS(key, attest.RegistrationResource(testScope, regID), e.clock.Now().Add(time.Hour), keyName))
}

func (e *env) connect(regID string, password []byte) (Identity, error) {
	return e.svc.Authenticate(e.ctx, Connect{ClientID: regID, Username: username(regID), Password: password, RemoteAddr: "127.0.0.1:1", TrackingID: "tr-" + regID})
}

func (e *env) mustConnect(regID string, password []byte) Identity {
	e.t.Helper()
	id, err := e.connect(regID, password)
	if err != nil {
		e.t.Fatalf("Authenticate(%s): %v", regID, err)
	}
	return id
}

func (e *env) putEnrollment(en *store.Enrollment) *store.Enrollment {
	e.t.Helper()
	out, err := e.st.PutEnrollment(e.ctx, en, "")
	if err != nil {
		e.t.Fatalf("PutEnrollment: %v", err)
	}
	return out
}

func (e *env) putGroup(g *store.Group) *store.Group {
	e.t.Helper()
	out, err := e.st.PutGroup(e.ctx, g, "")
	if err != nil {
		e.t.Fatalf("PutGroup: %v", err)
	}
	return out
}

func symKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func symmetricEnrollment(regID string, primary, secondary []byte) *store.Enrollment {
	return &store.Enrollment{
		RegistrationID: regID,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
				PrimaryKey: b64(primary), SecondaryKey: b64(secondary),
			}},
			ProvisioningStatus: store.StatusEnabled,
		},
	}
}

// register sends a register and expects a 202 with an operation id.
func (e *env) register(id Identity, req RegisterRequest) string {
	e.t.Helper()
	resp := e.svc.Register(e.ctx, id, req, "tr-reg")
	if resp.Status != 202 {
		e.t.Fatalf("Register: status %d, body %s", resp.Status, encode(e.t, resp.Body))
	}
	body := resp.Body.(*OperationStatus)
	if body.Status != "assigning" || !isOperationID(body.OperationID) || resp.RetryAfter < 0 {
		e.t.Fatalf("Register 202: %s retry %v", encode(e.t, body), resp.RetryAfter)
	}
	return body.OperationID
}

// pollFinal polls and expects a 200 with the final state.
func (e *env) pollFinal(id Identity, opID string) *OperationStatus {
	e.t.Helper()
	resp := e.svc.Poll(e.ctx, id, opID, "tr-poll")
	if resp.Status != 200 {
		e.t.Fatalf("Poll: status %d, body %s", resp.Status, encode(e.t, resp.Body))
	}
	body := resp.Body.(*OperationStatus)
	if body.OperationID != opID || body.RegistrationState == nil || body.RegistrationState.Status != body.Status {
		e.t.Fatalf("Poll 200: %s", encode(e.t, body))
	}
	return body
}

func encode(t testing.TB, body any) string {
	t.Helper()
	out, err := EncodeBody(body)
	if err != nil {
		t.Fatalf("EncodeBody: %v", err)
	}
	return string(out)
}

// errorBody asserts an error answer with the given code and returns its body.
func errorBody(t testing.TB, resp Response, code int) *ErrorBody {
	t.Helper()
	eb, ok := resp.Body.(*ErrorBody)
	if !ok || resp.Status != code/1000 || eb.ErrorCode != code || eb.TrackingID == "" || eb.TimestampUTC == "" || eb.Message == "" {
		t.Fatalf("want error %d, got status %d body %s", code, resp.Status, encode(t, resp.Body))
	}
	if _, err := time.Parse(time.RFC3339, eb.TimestampUTC); err != nil {
		t.Fatalf("timestamp %q: %v", eb.TimestampUTC, err)
	}
	return eb
}

// jsonMap encodes a body and decodes it as a generic map (the wire view).
func jsonMap(t testing.TB, body any) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(encode(t, body)), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func b64dec(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

func deriveKey(groupKey []byte, regID string) []byte { return attest.DeriveDeviceKey(groupKey, regID) }
