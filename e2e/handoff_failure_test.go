package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/iothubtest"
	"github.com/tpmdps/dpsd/provision"
	"github.com/tpmdps/dpsd/store"
)

// handoffProc starts `dpsd serve` trusting the stand-in hub's CA (and the
// extra PEM certificates given) for its outbound calls, with extra flags.
func handoffProc(t *testing.T, hub *iothubtest.Hub, extraCAs [][]byte, flags ...string) *dpsdProc {
	t.Helper()
	pemData := append([]byte(nil), hub.CACertPEM...)
	for _, c := range extraCAs {
		pemData = append(pemData, c...)
	}
	caFile := filepath.Join(t.TempDir(), "outbound-ca.pem")
	if err := os.WriteFile(caFile, pemData, 0o600); err != nil {
		t.Fatal(err)
	}
	p := newDpsd(t, buildDpsd(t), append([]string{"-outbound-ca-file", caFile}, flags...)...)
	p.start()
	return p
}

// symEnrollment is an individual symmetric key enrollment of a fresh key.
func symEnrollment(t *testing.T, id string) (*store.Enrollment, []byte) {
	key := randomKey(t, 32)
	return &store.Enrollment{RegistrationID: id, EnrollmentSettings: store.EnrollmentSettings{
		Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
			SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(key)}},
	}}, key
}

// TestHandoffThrottledProcess: the hub answers 429 to the first requests of
// a registration; `dpsd serve` retries with backoff and the device, over a
// real MQTT connection, ends assigned with its identity created exactly
// once, with the key it authenticated with; neither that key nor the hub's
// policy key is in the debug logs.
func TestHandoffThrottledProcess(t *testing.T) {
	hub := iothubtest.Start(t, iothubtest.Options{})
	p := handoffProc(t, hub, nil)
	ctx := ctxTimeout(t, 2*time.Minute)
	api := p.apiClient(nil)
	if _, err := api.PutLinkedHub(ctx, &store.LinkedHub{Name: hub.HostName, ConnectionString: hub.ConnectionString}, ""); err != nil {
		t.Fatal(err)
	}
	e, key := symEnrollment(t, "throttled-1")
	e.IoTHubHostName = hub.HostName
	if _, err := api.PutEnrollment(ctx, e, ""); err != nil {
		t.Fatal(err)
	}
	const throttled = 3
	hub.Throttle(throttled, 0)
	res, err := device.Provision(ctx, p.deviceConfig(p.idScope(), e.RegistrationID, &device.SymmetricKey{Key: key}))
	if err != nil || res.Status != device.StatusAssigned || res.AssignedHub != hub.HostName {
		t.Fatalf("provision: %+v %v\n%s", res, err, tail(p.logs.String(), 3000))
	}
	n429 := 0
	for _, r := range hub.Requests() {
		if r.Status == http.StatusTooManyRequests {
			n429++
		}
	}
	if n429 != throttled {
		t.Fatalf("the hub answered %d 429s, want %d", n429, throttled)
	}
	ident, ok := hub.Device(res.DeviceID)
	if !ok || hub.Creates(res.DeviceID) != 1 || ident.PrimaryKey != base64.StdEncoding.EncodeToString(key) {
		t.Fatalf("identity %+v (present %v), created %d times", ident, ok, hub.Creates(res.DeviceID))
	}
	if reg, err := api.GetRegistration(ctx, e.RegistrationID); err != nil || reg.Status != store.RegistrationAssigned || reg.AssignedHub != hub.HostName {
		t.Fatalf("record: %+v %v", reg, err)
	}
	// Neither the hub's policy key nor the device's key is in the debug logs.
	_, hubKey, _ := strings.Cut(hub.ConnectionString, "SharedAccessKey=")
	logs := p.logs.String()
	for name, secret := range map[string]string{"hub policy key": hubKey, "device key": base64.StdEncoding.EncodeToString(key)} {
		if secret == "" || strings.Contains(logs, secret) {
			t.Fatalf("the %s %q is in dpsd's logs (or empty)", name, secret)
		}
	}
}

// TestHandoffHubDownProcess: a hub that stays down past handoff-timeout
// ends the device's operation failed with errorCode 503211 naming the hub;
// the record says failed without a hub, the hub has no identity and the
// outbox is empty: nothing is half done. Once the hub is back, the same
// device registers again and is assigned, created once.
func TestHandoffHubDownProcess(t *testing.T) {
	hub := iothubtest.Start(t, iothubtest.Options{})
	p := handoffProc(t, hub, nil, "-handoff-timeout", "2s", "-hub-request-timeout", "500ms")
	ctx := ctxTimeout(t, 2*time.Minute)
	api := p.apiClient(nil)
	if _, err := api.PutLinkedHub(ctx, &store.LinkedHub{Name: hub.HostName, ConnectionString: hub.ConnectionString}, ""); err != nil {
		t.Fatal(err)
	}
	e, key := symEnrollment(t, "down-1")
	e.IoTHubHostName = hub.HostName
	if _, err := api.PutEnrollment(ctx, e, ""); err != nil {
		t.Fatal(err)
	}
	hub.SetDown(true)
	cfg := p.deviceConfig(p.idScope(), e.RegistrationID, &device.SymmetricKey{Key: key})
	res, err := device.Provision(ctx, cfg)
	var de *device.Error
	if !errors.As(err, &de) || !errors.Is(err, device.ErrNotAssigned) || res == nil || res.Status != device.StatusFailed ||
		res.State.ErrorCode != provision.ErrorCodeHubUnavailable || !strings.Contains(res.State.ErrorMessage, hub.HostName) || res.AssignedHub != "" {
		t.Fatalf("provision with the hub down: %+v %v", res, err)
	}
	reg, err := api.GetRegistration(ctx, e.RegistrationID)
	if err != nil || reg.Status != store.RegistrationFailed || reg.AssignedHub != "" || reg.ErrorCode != provision.ErrorCodeHubUnavailable {
		t.Fatalf("record: %+v %v", reg, err)
	}
	if ids := hub.DeviceIDs(); len(ids) != 0 {
		t.Fatalf("the hub has identities %v", ids)
	}
	if got := p.metric("dpsd_handoff_pending_jobs"); got != "0" {
		t.Fatalf("pending jobs %q after the failure", got)
	}
	hub.SetDown(false)
	res, err = device.Provision(ctx, cfg)
	if err != nil || res.Status != device.StatusAssigned || res.AssignedHub != hub.HostName || hub.Creates(res.DeviceID) != 1 {
		t.Fatalf("provision with the hub back: %+v %v (created %d)", res, err, hub.Creates(e.RegistrationID))
	}
}

// TestCustomAllocationWebhookTimeoutProcess: a custom allocation webhook
// that never answers (each call bounded by dpsdTimeoutSeconds, retried
// until handoff-timeout) ends the registration per the default fallback
// policy, refuse: failed with CustomAllocationFailed (400207), a message
// saying the webhook did not answer and never its function key; no hub
// identity is made and the record says failed.
func TestCustomAllocationWebhookTimeoutProcess(t *testing.T) {
	hub := iothubtest.Start(t, iothubtest.Options{})
	var calls atomic.Int64
	const functionKey = "fn-key-secret-0123456789"
	stop := make(chan struct{})
	wh := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("code") == functionKey {
			calls.Add(1)
		}
		// Read the request (so that the server notices the client going),
		// then never answer.
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	wh.StartTLS()
	t.Cleanup(wh.Close)
	t.Cleanup(func() { close(stop) })
	whCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: wh.Certificate().Raw})
	p := handoffProc(t, hub, [][]byte{whCA}, "-handoff-timeout", "3s")
	ctx := ctxTimeout(t, 2*time.Minute)
	api := p.apiClient(nil)
	if _, err := api.PutLinkedHub(ctx, &store.LinkedHub{Name: hub.HostName, ConnectionString: hub.ConnectionString}, ""); err != nil {
		t.Fatal(err)
	}
	e, key := symEnrollment(t, "custom-timeout-1")
	e.AllocationPolicy = "custom"
	e.IoTHubs = []string{hub.HostName}
	e.CustomAllocationDefinition = &store.CustomAllocationDefinition{
		WebhookURL: wh.URL + "/api/alloc?code=" + functionKey, APIVersion: "2021-10-01", TimeoutSeconds: 1}
	if _, err := api.PutEnrollment(ctx, e, ""); err != nil {
		t.Fatal(err)
	}
	res, err := device.Provision(ctx, p.deviceConfig(p.idScope(), e.RegistrationID, &device.SymmetricKey{Key: key}))
	if !errors.Is(err, device.ErrNotAssigned) || res == nil || res.Status != device.StatusFailed ||
		res.State.ErrorCode != provision.ErrorCodeCustomAllocationFailed || !strings.Contains(res.State.ErrorMessage, "did not answer") ||
		strings.Contains(res.State.ErrorMessage, functionKey) {
		t.Fatalf("provision with a silent webhook: %+v %v", res, err)
	}
	if calls.Load() < 1 {
		t.Fatal("the webhook was never called with its function key")
	}
	testkit.Await(t, "the outbox to empty", func() bool { return p.metric("dpsd_handoff_pending_jobs") == "0" })
	if hub.Count("create") != 0 {
		t.Fatalf("the hub created %d identities", hub.Count("create"))
	}
	reg, err := api.GetRegistration(ctx, e.RegistrationID)
	if err != nil || reg.Status != store.RegistrationFailed || reg.ErrorCode != provision.ErrorCodeCustomAllocationFailed || reg.AssignedHub != "" {
		t.Fatalf("record: %+v %v", reg, err)
	}
	if strings.Contains(p.logs.String(), functionKey) {
		t.Fatal("dpsd logged the webhook's function key")
	}
}

// TestHandoffIssuedCertificateProcess: a device that asks `dpsd serve`
// (its built-in issuer) for an operational certificate while its hub has a
// connector gets the certificate, verified by the device library against
// its key, and its identity in the stand-in hub is that certificate
// (selfSigned by the leaf's SHA-256 thumbprint), not its provisioning key.
func TestHandoffIssuedCertificateProcess(t *testing.T) {
	hub := iothubtest.Start(t, iothubtest.Options{})
	p := handoffProc(t, hub, nil)
	ctx := ctxTimeout(t, 2*time.Minute)
	api := p.apiClient(nil)
	if _, err := api.PutLinkedHub(ctx, &store.LinkedHub{Name: hub.HostName, ConnectionString: hub.ConnectionString}, ""); err != nil {
		t.Fatal(err)
	}
	e, key := symEnrollment(t, "issued-1")
	e.IoTHubHostName, e.CredentialPolicyName = hub.HostName, "default"
	if _, err := api.PutEnrollment(ctx, e, ""); err != nil {
		t.Fatal(err)
	}
	certKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cfg := p.deviceConfig(p.idScope(), e.RegistrationID, &device.SymmetricKey{Key: key})
	cfg.CertificateKey = certKey
	res, err := device.Provision(ctx, cfg)
	if err != nil || res.Status != device.StatusAssigned || len(res.CertificateChain) == 0 {
		t.Fatalf("provision: %+v %v", res, err)
	}
	_, thumb := store.CertificateThumbprints(res.CertificateChain[0])
	ident, ok := hub.Device(res.DeviceID)
	if !ok || ident.AuthType != "selfSigned" || !strings.EqualFold(ident.PrimaryThumbprint, thumb) || ident.PrimaryKey != "" || hub.Creates(res.DeviceID) != 1 {
		t.Fatalf("hub identity %+v (present %v), want selfSigned by %s", ident, ok, thumb)
	}
}
