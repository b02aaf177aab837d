package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/refusal"
	"github.com/tpmdps/dpsd/provision"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/bolt"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler(nil))
	defer srv.Close()
	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("scrape: %d %v", res.StatusCode, err)
	}
	return string(b)
}

func TestCountersAndGauges(t *testing.T) {
	m := New()
	ctx := context.Background()
	m.Registered(ctx, provision.RegistrationEvent{Status: store.RegistrationAssigned, AttestationType: store.AttestationTPM})
	m.Registered(ctx, provision.RegistrationEvent{Status: store.RegistrationAssigned, AttestationType: store.AttestationTPM})
	m.Registered(ctx, provision.RegistrationEvent{Status: store.RegistrationDisabled, AttestationType: store.AttestationSymmetricKey})
	m.Registered(ctx, provision.RegistrationEvent{Status: store.RegistrationAssigned, AttestationType: store.AttestationX509, CertificateSerial: "0A"})
	m.ChallengeIssued(ctx, "dev")
	m.AuthFailed(ctx, provision.AuthFailureNotAuthorized)
	m.EKCertificateChecked(ctx, provision.EKCertValid)
	m.EKCertificateChecked(ctx, provision.EKCertUntrusted)
	m.EKCertificateChecked(ctx, provision.EKCertUntrusted)
	m.ConnectRefused(hooks.RefusedRestrictedCap)
	m.Observe(hooks.PhaseRegister, 202, 3*time.Millisecond)
	m.SetSources(func() (int, int) { return 5, 2 }, func() map[string]int { return map[string]int{"tls": 4, "ws-http": 1} })

	text := scrape(t, m)
	for _, want := range []string{
		`dpsd_registrations_total{attestation="tpm",outcome="assigned"} 2`,
		`dpsd_registrations_total{attestation="symmetricKey",outcome="disabled"} 1`,
		`dpsd_tpm_challenges_issued_total 1`,
		`dpsd_certificates_issued_total{attestation="x509"} 1`,
		`dpsd_auth_failures_total{reason="not_authorized"} 1`,
		`dpsd_auth_failures_total{reason="restricted_session_cap"} 1`,
		`dpsd_ek_certificates_total{outcome="valid"} 1`,
		`dpsd_ek_certificates_total{outcome="untrusted"} 2`,
		`dpsd_request_duration_seconds_count{phase="register"} 1`,
		`dpsd_responses_total{code="202",phase="register"} 1`,
		`dpsd_mqtt_sessions{kind="authenticated"} 3`,
		`dpsd_mqtt_sessions{kind="restricted"} 2`,
		`dpsd_connections{listener="tls"} 4`,
		`go_goroutines`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if strings.Contains(text, `dpsd_certificates_issued_total{attestation="tpm"}`) {
		t.Error("a registration without a certificate counted as one issued")
	}
}

func TestMiddleware(t *testing.T) {
	m := New()
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "nope", http.StatusTeapot)
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/x", nil))
	if rec.Code != http.StatusTeapot {
		t.Fatalf("status %d", rec.Code)
	}
	if text := scrape(t, m); !strings.Contains(text, `dpsd_responses_total{code="418",phase="api"} 1`) {
		t.Fatalf("no api 418 in\n%s", text)
	}
}

func TestTimedStore(t *testing.T) {
	m := New()
	bolt, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"), bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	st := m.Store(bolt)
	ctx := context.Background()
	if _, err := st.PutEnrollment(ctx, &store.Enrollment{RegistrationID: "d1",
		EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: "AAAAAAAAAAAAAAAAAAAAAA=="}}}}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetEnrollment(ctx, "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	// A bulk import stays one transaction through the wrapper.
	b, ok := st.(store.EnrollmentBatcher)
	if !ok {
		t.Fatalf("%T hides the engine's store.EnrollmentBatcher", st)
	}
	if _, err := b.PutEnrollments(ctx, []*store.Enrollment{{RegistrationID: "d2",
		EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: "AAAAAAAAAAAAAAAAAAAAAA=="}}}}}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetEnrollment(ctx, "d1"); err == nil {
		t.Fatal("closed store answered")
	}
	text := scrape(t, m)
	for _, want := range []string{
		`dpsd_store_operation_duration_seconds_count{op="PutEnrollment"} 1`,
		`dpsd_store_operation_duration_seconds_count{op="PutEnrollments"} 1`,
		`dpsd_store_operation_duration_seconds_count{op="GetEnrollment"} 2`,
		`dpsd_store_errors_total{op="GetEnrollment"} 1`, // the closed store, not the not-found
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}

// TestConnectionsRefused: refusals by a per-address limit are counted by
// listener and reason.
func TestConnectionsRefused(t *testing.T) {
	m := New()
	m.ConnectionRefused("tls", refusal.AddressCap)
	m.ConnectionRefused("tls", refusal.AddressCap)
	m.ConnectionRefused("api", refusal.AddressRate)
	text := scrape(t, m)
	for _, want := range []string{
		`dpsd_connections_refused_total{listener="tls",reason="per_address_cap"} 2`,
		`dpsd_connections_refused_total{listener="api",reason="per_address_rate"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}

// TestHandoffMetrics: the outbox's outside calls are counted by step and
// outcome and timed; the pending jobs are read from the store at scrape.
func TestHandoffMetrics(t *testing.T) {
	m := New()
	ctx := context.Background()
	m.HandoffCall(ctx, provision.HandoffStepHub, provision.HandoffRetry, 20*time.Millisecond)
	m.HandoffCall(ctx, provision.HandoffStepHub, provision.HandoffOK, 5*time.Millisecond)
	m.HandoffCall(ctx, provision.HandoffStepWebhook, provision.HandoffFailed, time.Second)
	if strings.Contains(scrape(t, m), "dpsd_handoff_pending_jobs") {
		t.Fatal("pending jobs reported without a source")
	}
	m.SetPendingJobs(func(context.Context) (int, error) { return 7, nil })
	text := scrape(t, m)
	for _, want := range []string{
		`dpsd_handoff_calls_total{outcome="retry",step="hub"} 1`,
		`dpsd_handoff_calls_total{outcome="ok",step="hub"} 1`,
		`dpsd_handoff_calls_total{outcome="failed",step="webhook"} 1`,
		`dpsd_handoff_call_duration_seconds_count{step="hub"} 2`,
		"dpsd_handoff_pending_jobs 7",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %q", want)
		}
	}
	m.SetPendingJobs(func(context.Context) (int, error) { return 0, errors.New("store down") })
	if strings.Contains(scrape(t, m), "dpsd_handoff_pending_jobs") {
		t.Fatal("pending jobs reported from a failing store")
	}
}
