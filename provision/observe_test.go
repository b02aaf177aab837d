package provision

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

	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/store"
)

// recordingObserver keeps every event it is told about.
type recordingObserver struct {
	mu         sync.Mutex
	registered []RegistrationEvent
	challenges []string
	failures   []string
	ekCerts    []string
}

func (o *recordingObserver) Registered(_ context.Context, ev RegistrationEvent) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.registered = append(o.registered, ev)
}

func (o *recordingObserver) ChallengeIssued(_ context.Context, id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.challenges = append(o.challenges, id)
}

func (o *recordingObserver) AuthFailed(_ context.Context, reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failures = append(o.failures, reason)
}

func (o *recordingObserver) EKCertificateChecked(_ context.Context, outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ekCerts = append(o.ekCerts, outcome)
}

func TestObserverAndAudit(t *testing.T) {
	obs := &recordingObserver{}
	var logs testkit.LogBuffer
	e := newEnv(t, func(c *Config) {
		c.Observer = obs
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	e.putEnrollment(symmetricEnrollment("obs-1", symKey(1), symKey(2)))
	dis := symmetricEnrollment("obs-2", symKey(1), symKey(2))
	dis.ProvisioningStatus = store.StatusDisabled
	e.putEnrollment(dis)

	id := e.mustConnect("obs-1", e.sas("obs-1", symKey(1), "registration"))
	if st := e.pollFinal(id, e.register(id, RegisterRequest{})); st.Status != store.RegistrationAssigned {
		t.Fatalf("status %q", st.Status)
	}
	id2 := e.mustConnect("obs-2", e.sas("obs-2", symKey(1), "registration"))
	if st := e.pollFinal(id2, e.register(id2, RegisterRequest{})); st.Status != store.RegistrationDisabled {
		t.Fatalf("status %q", st.Status)
	}
	// Refusals with their labels.
	if _, err := e.connect("obs-1", e.sas("obs-1", symKey(9), "registration")); err == nil {
		t.Fatal("wrong key accepted")
	}
	if _, err := e.connect("nobody", e.sas("nobody", symKey(1), "registration")); err == nil {
		t.Fatal("unknown id accepted")
	}
	if _, err := e.svc.Authenticate(e.ctx, Connect{ClientID: "x", Username: "garbage", Password: []byte("p")}); err == nil {
		t.Fatal("bad username accepted")
	}

	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.registered) != 2 {
		t.Fatalf("registered events %+v", obs.registered)
	}
	ev := obs.registered[0]
	if ev.RegistrationID != "obs-1" || ev.Status != store.RegistrationAssigned || ev.AttestationType != store.AttestationSymmetricKey ||
		ev.AssignedHub == "" || ev.Method != AuthSymmetricKey.String() || ev.TrackingID == "" {
		t.Fatalf("event %+v", ev)
	}
	if obs.registered[1].Status != store.RegistrationDisabled {
		t.Fatalf("second event %+v", obs.registered[1])
	}
	want := []string{AuthFailureNotAuthorized, AuthFailureNotAuthorized, AuthFailureBadUsername}
	if strings.Join(obs.failures, ",") != strings.Join(want, ",") {
		t.Fatalf("failure reasons %v, want %v", obs.failures, want)
	}

	// One audit line per outcome: who, what, when, and no key material.
	var audits int
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec struct {
			Msg   string         `json:"msg"`
			Audit map[string]any `json:"audit"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec.Msg != "registration" {
			continue
		}
		audits++
		for _, k := range []string{"who", "action", "at", "attestation"} {
			if rec.Audit[k] == nil || rec.Audit[k] == "" {
				t.Errorf("audit line lacks %s: %s", k, line)
			}
		}
	}
	if audits != 2 {
		t.Fatalf("%d audit lines, want 2", audits)
	}
	if strings.Contains(logs.String(), b64(symKey(1))) || strings.Contains(logs.String(), "sig=") {
		t.Fatal("a key or token reached the log")
	}
}

// TestAuthFailureLabels: every refused CONNECT is observed once, with the
// label of what it showed: the malformed-input labels for refusals decided
// from the CONNECT alone, not_authorized for the rest, store_unavailable
// when the store fails. Each is also logged once with its reason.
func TestAuthFailureLabels(t *testing.T) {
	obs := &recordingObserver{}
	var logs testkit.LogBuffer
	e := newEnv(t, func(c *Config) {
		c.Observer = obs
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	const id = "labels-1"
	e.putEnrollment(symmetricEnrollment(id, symKey(1), nil))
	ref := func(run runID, expires time.Time) string {
		r, err := newChallengeRef(e.svc.cfg.Rand, run, expires)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	now := e.clock.Now()
	connect := func(c Connect) error { _, err := e.svc.Authenticate(e.ctx, c); return err }
	for _, tc := range []struct {
		name string
		c    Connect
		want string
	}{
		{"garbage username", Connect{ClientID: "x", Username: "garbage", Password: []byte("p")}, AuthFailureBadUsername},
		{"client id mismatch", Connect{ClientID: "other", Username: username(id), Password: e.sas(id, symKey(1), "")}, AuthFailureClientIDMismatch},
		{"unknown id scope", Connect{ClientID: id, Username: "0ne00000B0B/registrations/" + id + "/api-version=2021-06-01", Password: e.sas(id, symKey(1), "")}, AuthFailureUnknownIDScope},
		{"not a SAS token", Connect{ClientID: id, Username: username(id), Password: []byte("not a token")}, AuthFailureBadToken},
		{"foreign skn", Connect{ClientID: id, Username: username(id), Password: e.sas(id, symKey(1), "owner")}, AuthFailureBadToken},
		{"malformed challenge reference", Connect{ClientID: id, Username: username(id), Password: e.sas(id, symKey(1), "t2.short")}, AuthFailureBadChallengeRef},
		{"expired challenge", Connect{ClientID: id, Username: username(id), Password: e.sas(id, symKey(1), ref(e.svc.run, now.Add(-time.Minute)))}, AuthFailureChallengeExpired},
		{"challenge of another run", Connect{ClientID: id, Username: username(id), Password: e.sas(id, symKey(1), ref(runID{1}, now.Add(time.Minute)))}, AuthFailureNotAuthorized},
		{"challenge key wrong", Connect{ClientID: id, Username: username(id), Password: e.sas(id, symKey(1), ref(e.svc.run, now.Add(time.Minute)))}, AuthFailureNotAuthorized},
		{"wrong symmetric key", Connect{ClientID: id, Username: username(id), Password: e.sas(id, symKey(2), "")}, AuthFailureNotAuthorized},
	} {
		before := len(obs.failures)
		if err := connect(tc.c); !errors.Is(err, ErrNotAuthorized) {
			t.Fatalf("%s: %v, want not authorized", tc.name, err)
		}
		if len(obs.failures) != before+1 || obs.failures[before] != tc.want {
			t.Fatalf("%s: observed %v, want one %q", tc.name, obs.failures[before:], tc.want)
		}
	}
	if err := e.st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.connect(id, e.sas(id, symKey(1), "")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("closed store: %v", err)
	}
	if got := obs.failures[len(obs.failures)-1]; got != AuthFailureUnavailable {
		t.Fatalf("closed store: label %q", got)
	}
	if n, want := strings.Count(logs.String(), `"msg":"connect refused"`), len(obs.failures); n != want {
		t.Fatalf("%d refusal log lines for %d refusals", n, want)
	}
}

// TestAuthFailureLabelsHideEnrollments: the metric label of a refused
// CONNECT is the same whether the id is enrolled (with a wrong key, another
// attestation type, a certificate other than the pinned one) or unknown, so
// that /metrics cannot be used to tell enrolled ids from unknown ones. The
// log keeps the detailed reason.
func TestAuthFailureLabelsHideEnrollments(t *testing.T) {
	obs := &recordingObserver{}
	var logs testkit.LogBuffer
	e := newEnv(t, func(c *Config) {
		c.Observer = obs
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	e.putEnrollment(symmetricEnrollment("known-sym", symKey(1), symKey(2)))
	e.putEnrollment(tpmEnrollment("known-tpm", otherEK(t)))
	pinned := e.selfSigned("known-x509")
	e.putEnrollment(x509Enrollment("known-x509", withCert(pinned.pem), nil))
	e.putGroup(&store.Group{EnrollmentGroupID: "fleet", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
		SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: b64(symKey(7))}}}})

	refusals := []struct {
		name  string
		regID string
		try   func(regID string) error
	}{
		{"unknown id, SAS", "nobody", func(id string) error { _, err := e.connect(id, e.sas(id, symKey(3), "registration")); return err }},
		{"symmetric enrollment, wrong key", "known-sym", func(id string) error { _, err := e.connect(id, e.sas(id, symKey(3), "registration")); return err }},
		{"TPM enrollment, SAS", "known-tpm", func(id string) error { _, err := e.connect(id, e.sas(id, symKey(3), "registration")); return err }},
		{"group id, wrong key", "fleet-dev", func(id string) error { _, err := e.connect(id, e.sas(id, symKey(3), "")); return err }},
		{"unknown id, certificate", "nobody2", func(id string) error { _, err := e.connectX509(id, e.selfSigned(id).cert); return err }},
		{"symmetric enrollment, certificate", "known-sym", func(id string) error { _, err := e.connectX509(id, e.selfSigned(id).cert); return err }},
		{"x509 enrollment, other certificate", "known-x509", func(id string) error { _, err := e.connectX509(id, e.selfSigned(id).cert); return err }},
	}
	for _, r := range refusals {
		if err := r.try(r.regID); !errors.Is(err, ErrNotAuthorized) {
			t.Fatalf("%s: %v, want not authorized", r.name, err)
		}
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.failures) != len(refusals) {
		t.Fatalf("%d failures observed, want %d: %v", len(obs.failures), len(refusals), obs.failures)
	}
	for i, r := range refusals {
		if obs.failures[i] != AuthFailureNotAuthorized {
			t.Errorf("%s: label %q, want %q (the same for every id)", r.name, obs.failures[i], AuthFailureNotAuthorized)
		}
	}
	// The log still tells the operator why.
	for _, reason := range []string{"no enrollment and no enrollment group", "SAS does not verify with the enrollment's keys", "individual enrollment is of type"} {
		if !strings.Contains(logs.String(), reason) {
			t.Errorf("the log lacks the reason %q", reason)
		}
	}
}

func TestObserverTPMChallenge(t *testing.T) {
	obs := &recordingObserver{}
	e := newEnv(t, func(c *Config) { c.Observer = obs })
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
	id := e.tpmLogin(d, regID)
	if st := e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keys()})); st.Status != store.RegistrationAssigned {
		t.Fatalf("status %q", st.Status)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.challenges) != 1 || obs.challenges[0] != strings.ToLower(regID) {
		t.Fatalf("challenges %v", obs.challenges)
	}
	if len(obs.registered) != 1 || obs.registered[0].AttestationType != store.AttestationTPM || obs.registered[0].Method != AuthTPM.String() {
		t.Fatalf("registered %+v", obs.registered)
	}
}

// TestRequestRefusalLogged: a refused register or poll is logged once,
// with its trackingId, registrationId and reason (for a 500, the error),
// and answered in the DPS error shape.
func TestRequestRefusalLogged(t *testing.T) {
	var logs testkit.LogBuffer
	e := newEnv(t, func(c *Config) { c.Logger = slog.New(slog.NewJSONHandler(&logs, nil)) })
	e.putEnrollment(symmetricEnrollment("logged-1", symKey(1), nil))
	id := e.mustConnect("logged-1", e.sas("logged-1", symKey(1), ""))
	restricted := e.mustConnect("logged-1", nil)
	for _, tc := range []struct {
		name      string
		answer    func(trackingID string) Response
		code      int
		msg, attr string
		reason    string
	}{
		{"restricted poll", func(tr string) Response { return e.svc.Poll(e.ctx, restricted, "4.00", tr) },
			ErrorCodeUnauthorized, "request refused", "reason", "restricted session may not poll"},
		{"malformed operation id", func(tr string) Response { return e.svc.Poll(e.ctx, id, "nope", tr) },
			ErrorCodeNotFound, "poll refused", "reason", "malformed operation id"},
		{"body id mismatch", func(tr string) Response {
			return e.svc.Register(e.ctx, id, RegisterRequest{RegistrationID: "someone-else"}, tr)
		}, ErrorCodeBadRequest, "bad request", "reason", "the body's registrationId does not match the connection's"},
		{"store closed", func(tr string) Response {
			if err := e.st.Close(); err != nil {
				t.Fatal(err)
			}
			return e.svc.Register(e.ctx, id, RegisterRequest{}, tr)
		}, ErrorCodeInternal, "internal error", "error", "read enrollment"},
	} {
		tr := "tr-" + strings.ReplaceAll(tc.name, " ", "-")
		eb := errorBody(t, tc.answer(tr), tc.code)
		if eb.TrackingID != tr {
			t.Errorf("%s: answer's trackingId %q", tc.name, eb.TrackingID)
		}
		var recs []map[string]any
		for _, line := range strings.Split(logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["trackingId"] == tr {
				recs = append(recs, m)
			}
		}
		if len(recs) != 1 {
			t.Fatalf("%s: %d log records, want 1: %v", tc.name, len(recs), recs)
		}
		r := recs[0]
		if r["msg"] != tc.msg || r["registrationId"] != "logged-1" || !strings.Contains(fmt.Sprint(r[tc.attr]), tc.reason) {
			t.Errorf("%s: log record %v, want msg %q and %s containing %q", tc.name, r, tc.msg, tc.attr, tc.reason)
		}
	}
}
