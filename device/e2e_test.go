package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/device/tpmtransport"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/swtpmtest"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
)

// TestE2ESimulatorTLS provisions a TPM device on the reference simulator
// against the real service over TLS, with the default registration id.
func TestE2ESimulatorTLS(t *testing.T) {
	srv := startServer(t, false)
	tpm := tpmsim.Open(t)
	att := &TPM{Device: tpm}
	regID := enrollTPM(t, srv, "", endorsementKey(t, att))

	var phases []Phase
	cfg := serverConfig(t, srv, TransportTLS, att)
	cfg.Payload = json.RawMessage(`{"model":"sim"}`)
	cfg.OnPhase = func(p Phase) { phases = append(phases, p) }
	cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	res, err := Provision(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != StatusAssigned || res.AssignedHub != dpsdtest.DefaultHub || res.RegistrationID != regID ||
		res.DeviceID == "" || res.OperationID == "" || res.Substatus == "" {
		t.Fatalf("result %+v", res)
	}
	if res.State.TPM == nil || res.State.TPM.AuthenticationKey == "" {
		t.Fatalf("no hub key blob in registrationState %s", res.RegistrationState)
	}
	if res.HubKey == nil || res.HubKey.Handle != "0x81000101" || res.HubKey.Private != nil {
		t.Fatalf("hub key %+v", res.HubKey)
	}
	got := strings.Join(phasesToStrings(phases), ",")
	if got != "attest,connect,challenge,activate,reconnect,register,poll,activate" &&
		got != "attest,connect,challenge,activate,reconnect,register,activate" {
		t.Fatalf("phases %s", got)
	}
	checkHubSAS(t, srv, tpm, DefaultHubKeyHandle, res)
	if n := transientObjects(t, tpm); n != 0 {
		t.Fatalf("%d transient objects left in the TPM", n)
	}

	// The CLI prints the Result as JSON: it must round-trip.
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil || back.AssignedHub != res.AssignedHub || back.HubKey.Handle != "0x81000101" {
		t.Fatalf("JSON round trip: %v %s", err, b)
	}

	// Provisioning again (a re-provision) works and replaces the persisted hub key.
	res2, err := Provision(context.Background(), serverConfig(t, srv, TransportTLS, att))
	if err != nil {
		t.Fatalf("second provisioning: %v", err)
	}
	checkHubSAS(t, srv, tpm, DefaultHubKeyHandle, res2)
}

// TestE2ESimulatorRefused checks the typed errors of an unknown device and
// of an EK that does not match the enrollment.
func TestE2ESimulatorRefused(t *testing.T) {
	srv := startServer(t, false)
	att := &TPM{Device: tpmsim.Open(t)}
	cfg := serverConfig(t, srv, TransportTCP, att)
	cfg.RegistrationID = "not-enrolled"
	_, err := Provision(context.Background(), cfg)
	var e *Error
	if !errors.As(err, &e) || e.Phase != PhaseChallenge || e.Status != 401 || e.ErrorCode != 401002 || !e.Refused() {
		t.Fatalf("unknown device: %v", err)
	}
	if e.RegistrationID != "not-enrolled" || !strings.Contains(err.Error(), `registration id "not-enrolled" is not enrolled`) {
		t.Fatalf("the 401 does not name the registration id: %v", err)
	}

	// Enrolled with another TPM's EK (an ECC EK from a swtpm): same answer.
	sw := swtpmtest.Start(t)
	other, err := tpmtransport.Open(context.Background(), sw.Selector())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	enrollTPM(t, srv, "wrong-ek", endorsementKey(t, &TPM{Device: other, KeyAlg: devtpm.ECCP256}))
	cfg.RegistrationID = "wrong-ek"
	_, err = Provision(context.Background(), cfg)
	if !errors.As(err, &e) || e.Status != 401 || e.ErrorCode != 401002 {
		t.Fatalf("wrong EK: %v", err)
	}
}

// TestE2ESwtpmReopen provisions on a swtpm through the raw swtpm transport,
// persisting the identity key too, then closes the transport, reopens it and
// uses both persisted keys.
func TestE2ESwtpmReopen(t *testing.T) {
	srv := startServer(t, true)
	sw := swtpmtest.Start(t)
	ctx := context.Background()
	tpm, err := tpmtransport.Open(ctx, sw.Selector())
	if err != nil {
		t.Fatal(err)
	}
	att := &TPM{Device: tpm, IdentityKeyHandle: devtpm.IdentityKeyHandle}
	enrollTPM(t, srv, "swtpm-device-1", endorsementKey(t, att))
	cfg := serverConfig(t, srv, TransportWebSocket, att)
	cfg.RegistrationID = "swtpm-device-1"
	res, err := Provision(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != StatusAssigned || res.DeviceID != "swtpm-device-1" || res.HubKey.Handle != "0x81000101" {
		t.Fatalf("result %+v", res)
	}
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}

	tpm, err = tpmtransport.Open(ctx, sw.Selector())
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	checkHubSAS(t, srv, tpm, DefaultHubKeyHandle, res)
	idk, err := devtpm.OpenIdentityKey(tpm, devtpm.IdentityKeyHandle)
	if err != nil {
		t.Fatalf("persisted identity key after reopen: %v", err)
	}
	mac, err := idk.HMAC([]byte("x"))
	if err != nil || len(mac) != 32 {
		t.Fatalf("HMAC with the persisted identity key: %x %v", mac, err)
	}
	hub, err := devtpm.OpenIdentityKey(tpm, DefaultHubKeyHandle)
	if err != nil {
		t.Fatal(err)
	}
	hubMAC, err := hub.HMAC([]byte("x"))
	if err != nil || string(hubMAC) == string(mac) {
		t.Fatalf("identity and hub keys must differ: %v", err)
	}
	if n := transientObjects(t, tpm); n != 0 {
		t.Fatalf("%d transient objects left in the TPM", n)
	}
}

// TestE2ECancelMidway cancels a provisioning at each phase after the
// challenge and checks that the TPM holds no stray objects and that the next
// attempt succeeds.
func TestE2ECancelMidway(t *testing.T) {
	srv := startServer(t, false)
	tpm := tpmsim.Open(t)
	att := &TPM{Device: tpm, IdentityKeyHandle: devtpm.IdentityKeyHandle}
	enrollTPM(t, srv, "cancel-me", endorsementKey(t, att))
	for _, at := range []Phase{PhaseActivate, PhaseReconnect, PhaseRegister, PhasePoll} {
		t.Run(string(at), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cfg := serverConfig(t, srv, TransportTCP, att)
			cfg.RegistrationID = "cancel-me"
			reached := false
			cfg.OnPhase = func(p Phase) {
				if p == at && !reached {
					reached = true
					cancel()
				}
			}
			_, err := Provision(ctx, cfg)
			var e *Error
			if !reached || !errors.As(err, &e) || !errors.Is(err, context.Canceled) {
				t.Fatalf("cancel at %s (reached %v): err = %v", at, reached, err)
			}
			if n := transientObjects(t, tpm); n != 0 {
				t.Fatalf("%d transient objects left after cancel at %s", n, at)
			}
			res, err := Provision(context.Background(), serverConfig(t, srv, TransportTCP, att).withID("cancel-me"))
			if err != nil {
				t.Fatalf("attempt after cancel at %s: %v", at, err)
			}
			checkHubSAS(t, srv, tpm, DefaultHubKeyHandle, res)
		})
	}
}

func (c Config) withID(id string) Config { c.RegistrationID = id; return c }

// TestE2EConcurrentDevices provisions 50 TPM devices at once from one
// process. One TPM has one EK, so 50 devices need 50 TPMs: each is its own
// swtpm process (ECC P-256 keys, which swtpm creates quickly), all talking
// to one server over TLS.
func TestE2EConcurrentDevices(t *testing.T) {
	const n = 50
	srv := startServer(t, false)
	ctx := context.Background()
	atts := make([]*TPM, n)
	var wg sync.WaitGroup
	sws := make([]*swtpmtest.TPM, n)
	for i := range n {
		sws[i] = swtpmtest.Start(t)
	}
	for i := range n {
		tpm, err := tpmtransport.Open(ctx, sws[i].Selector())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tpm.Close() })
		atts[i] = &TPM{Device: tpm, KeyAlg: devtpm.ECCP256}
		enrollTPM(t, srv, fmt.Sprintf("fleet-%02d", i), endorsementKey(t, atts[i]))
	}
	results := make([]*Result, n)
	errs := make([]error, n)
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			cfg := serverConfig(t, srv, TransportTLS, atts[i])
			cfg.RegistrationID = fmt.Sprintf("fleet-%02d", i)
			results[i], errs[i] = Provision(ctx, cfg)
		})
	}
	wg.Wait()
	t.Logf("%d devices provisioned concurrently in %v", n, time.Since(start))
	seen := map[string]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("device %d: %v", i, errs[i])
		}
		r := results[i]
		if r.Status != StatusAssigned || r.DeviceID != fmt.Sprintf("fleet-%02d", i) || seen[r.DeviceID] {
			t.Fatalf("device %d: %+v", i, r)
		}
		seen[r.DeviceID] = true
	}
	// Every device got its own hub key, in its own TPM.
	for _, i := range []int{0, n / 2, n - 1} {
		checkHubSAS(t, srv, atts[i].Device, DefaultHubKeyHandle, results[i])
	}
}

// TestE2ESymmetricKey provisions a symmetric-key device through the same
// client, to show the Attestation seam carries a non-TPM method.
func TestE2ESymmetricKey(t *testing.T) {
	srv := startServer(t, false)
	key := []byte("0123456789abcdef0123456789abcdef")
	_, err := srv.Store.PutEnrollment(context.Background(), storeSymEnrollment("sym-1", key), "")
	if err != nil {
		t.Fatal(err)
	}
	cfg := serverConfig(t, srv, TransportTLS, &SymmetricKey{Key: key})
	cfg.RegistrationID = "sym-1"
	res, err := Provision(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != StatusAssigned || res.AssignedHub != dpsdtest.DefaultHub || res.HubKey != nil {
		t.Fatalf("result %+v", res)
	}
	// A wrong key is refused at CONNECT.
	cfg.Attestation = &SymmetricKey{Key: []byte("another key, 32 bytes long......")}
	_, err = Provision(context.Background(), cfg)
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrConnectRefused) || !e.Refused() {
		t.Fatalf("wrong key: %v", err)
	}
}

// TestE2EManySymmetricKeyDevices runs 300 Provision calls at once from one
// process (symmetric keys: no TPM to share), as a gateway would.
func TestE2EManySymmetricKeyDevices(t *testing.T) {
	const n = 300
	srv := startServer(t, false)
	keys := make([][]byte, n)
	for i := range n {
		keys[i] = []byte(fmt.Sprintf("device-key-%04d-0123456789abcdef", i))
		if _, err := srv.Store.PutEnrollment(context.Background(), storeSymEnrollment(fmt.Sprintf("gw-%03d", i), keys[i]), ""); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	results := make([]*Result, n)
	for i := range n {
		wg.Go(func() {
			cfg := serverConfig(t, srv, TransportTCP, &SymmetricKey{Key: keys[i]})
			cfg.RegistrationID = fmt.Sprintf("gw-%03d", i)
			results[i], errs[i] = Provision(context.Background(), cfg)
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("device %d: %v", i, errs[i])
		}
		if results[i].DeviceID != fmt.Sprintf("gw-%03d", i) || results[i].Status != StatusAssigned {
			t.Fatalf("device %d: %+v", i, results[i])
		}
	}
}

// spoiledChallenges is a TPM whose first n challenge answers are signed with
// a wrong key, so that the broker refuses those reconnects as it refuses a
// challenge issued before it restarted.
type spoiledChallenges struct {
	*TPM
	n, calls int
}

func (s *spoiledChallenges) Challenge(ctx context.Context, sess Session, c Challenge) (Credentials, error) {
	creds, err := s.TPM.Challenge(ctx, sess, c)
	s.calls++
	if err == nil && s.calls <= s.n {
		creds.Password = attest.SignSAS(make([]byte, 32), sess.Resource, sess.Now.Add(time.Hour), c.KeyName)
	}
	return creds, err
}

// TestE2EReconnectRefusedStartsOverOnce: when the reconnect after a
// challenge is refused, the device asks for a new challenge once: it
// provisions if the second reconnect is admitted, and fails at the reconnect
// after exactly two challenges otherwise; the TPM is left clean either way.
func TestE2EReconnectRefusedStartsOverOnce(t *testing.T) {
	srv := startServer(t, false)
	tpm := tpmsim.Open(t)
	regID := enrollTPM(t, srv, "", endorsementKey(t, &TPM{Device: tpm}))
	for _, tc := range []struct {
		spoiled int
		wantOK  bool
	}{{1, true}, {2, false}} {
		att := &spoiledChallenges{TPM: &TPM{Device: tpm}, n: tc.spoiled}
		res, err := Provision(context.Background(), serverConfig(t, srv, TransportTCP, att))
		if tc.wantOK {
			if err != nil || res.Status != StatusAssigned || res.RegistrationID != regID {
				t.Fatalf("one refused reconnect: %+v, %v", res, err)
			}
			checkHubSAS(t, srv, tpm, DefaultHubKeyHandle, res)
		} else {
			var e *Error
			if !errors.As(err, &e) || e.Phase != PhaseReconnect || !errors.Is(err, ErrConnectRefused) {
				t.Fatalf("two refused reconnects: %v", err)
			}
		}
		if att.calls != 2 {
			t.Fatalf("%d refused: %d challenges opened, want 2", tc.spoiled, att.calls)
		}
		if n := transientObjects(t, tpm); n != 0 {
			t.Fatalf("%d transient objects left in the TPM", n)
		}
	}
}
