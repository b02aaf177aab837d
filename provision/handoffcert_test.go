package provision

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/issuer"
	"github.com/tpmdps/dpsd/store"
)

// countingIssuer counts the certificates a CA issues.
type countingIssuer struct {
	ca *issuer.CA
	n  atomic.Int64
}

func (c *countingIssuer) Issue(ctx context.Context, req issuer.Request) ([]*x509.Certificate, error) {
	c.n.Add(1)
	return c.ca.Issue(ctx, req)
}

// withCountingCA gives the service a built-in CA that counts its issues.
func withCountingCA(t *testing.T, out **countingIssuer) func(*Config) {
	return func(c *Config) {
		var ca *issuer.CA
		withCA(t, &ca)(c)
		*out = &countingIssuer{ca: ca}
		c.Issuer = *out
	}
}

// sha256Thumb is a certificate's SHA-256 thumbprint as the hub holds it.
func sha256Thumb(c *x509.Certificate) string {
	_, s := store.CertificateThumbprints(c)
	return s
}

// TestHandoffIssuedCertificate: a device that asks for an operational
// certificate while its hub has a connector is registered in the hub by
// that certificate: a selfSigned (thumbprint) identity naming the issued
// leaf, no SAS keys. The certificate is issued once even when the hub
// throttles (kept in the job before the hub hears of it), is answered to
// the device and recorded. A renewal updates the same identity (no second
// create): the new certificate primary, the one it replaces secondary.
func TestHandoffIssuedCertificate(t *testing.T) {
	var ci *countingIssuer
	e := newHubEnv(t, 1, withCountingCA(t, &ci))
	hub := e.hubs[0]
	e.link(hub)
	en := issuingEnrollment("cam-1", symKey(1))
	en.IoTHubHostName = hub.HostName
	e.putEnrollment(en)
	id := e.mustConnect("cam-1", e.sas("cam-1", symKey(1), ""))
	key, der := csrFor(t, "cam-1")
	hub.Throttle(2, 0)
	opID := e.register(id, RegisterRequest{CSR: base64.StdEncoding.EncodeToString(der)})
	got := e.awaitFinal(id, opID, time.Second)
	if got.Status != "assigned" {
		t.Fatalf("final %s", encode(t, got))
	}
	chain := chainOf(t, got.RegistrationState)
	checkIssued(t, chain, ci.ca, &key.PublicKey, "cam-1", "cam-1", e.clock.Now())
	if n := ci.n.Load(); n != 1 {
		t.Fatalf("issued %d certificates for one registration", n)
	}
	ident, ok := hub.Device("cam-1")
	if !ok || ident.AuthType != "selfSigned" || !strings.EqualFold(ident.PrimaryThumbprint, sha256Thumb(chain[0])) ||
		ident.SecondaryThumbprint != "" || ident.PrimaryKey != "" || ident.SecondaryKey != "" {
		t.Fatalf("hub identity %+v, want selfSigned by %s", ident, sha256Thumb(chain[0]))
	}
	rec, err := e.st.GetRegistration(e.ctx, "cam-1")
	if err != nil || rec.Certificate == nil || !rec.Certificate.MatchesCertificate(chain[0]) || rec.AssignedHub != hub.HostName {
		t.Fatalf("record %+v %v", rec, err)
	}

	// Renewal: a new certificate, the same identity updated.
	e.clock.Advance(time.Hour)
	_, der2 := csrFor(t, "cam-1")
	got = e.awaitFinal(id, e.register(id, RegisterRequest{CSR: base64.StdEncoding.EncodeToString(der2)}), 0)
	chain2 := chainOf(t, got.RegistrationState)
	ident, _ = hub.Device("cam-1")
	if !strings.EqualFold(ident.PrimaryThumbprint, sha256Thumb(chain2[0])) || !strings.EqualFold(ident.SecondaryThumbprint, sha256Thumb(chain[0])) ||
		hub.Creates("cam-1") != 1 {
		t.Fatalf("after renewal: identity %+v, created %d times", ident, hub.Creates("cam-1"))
	}
	rec, _ = e.st.GetRegistration(e.ctx, "cam-1")
	if !rec.Certificate.MatchesCertificate(chain2[0]) || len(rec.SupersededCertificates) != 1 ||
		!strings.EqualFold(rec.SupersededCertificates[0].SHA256Thumbprint, sha256Thumb(chain[0])) {
		t.Fatalf("record after renewal %+v", rec)
	}
}

// TestHandoffIssuedCertificateCAHub: with a hub whose X509Identity is
// certificateAuthority, a device whose certificate's common name is its
// device id gets a certificateAuthority identity; one whose common name is
// not exactly its device id (the hub would refuse it) keeps a thumbprint
// identity.
func TestHandoffIssuedCertificateCAHub(t *testing.T) {
	var ci *countingIssuer
	e := newHubEnv(t, 1, withCountingCA(t, &ci))
	hub := e.hubs[0]
	e.putHub(&store.LinkedHub{Name: hub.HostName, ConnectionString: hub.ConnectionString, X509Identity: store.X509CertificateAuthority})
	for _, c := range []struct {
		regID, cn, deviceID, auth string
	}{
		{"cam-2", "cam-2", "", "certificateAuthority"},
		{"cam-3", "CAM-3", "", "selfSigned"},         // device id cam-3, CN CAM-3
		{"cam-4", "cam-4", "camera-4", "selfSigned"}, // the enrollment names another device id
	} {
		en := issuingEnrollment(c.regID, symKey(2))
		en.IoTHubHostName, en.DeviceID = hub.HostName, c.deviceID
		e.putEnrollment(en)
		id := e.mustConnect(c.regID, e.sas(c.regID, symKey(2), ""))
		_, der := csrFor(t, c.cn)
		got := e.awaitFinal(id, e.register(id, RegisterRequest{CSR: base64.StdEncoding.EncodeToString(der)}), 0)
		if got.Status != "assigned" {
			t.Fatalf("%s: %s", c.regID, encode(t, got))
		}
		leaf := chainOf(t, got.RegistrationState)[0]
		ident, ok := hub.Device(got.RegistrationState.DeviceID)
		if !ok || ident.AuthType != c.auth || ident.PrimaryKey != "" {
			t.Fatalf("%s: identity %+v, want %s", c.regID, ident, c.auth)
		}
		if c.auth == "selfSigned" && !strings.EqualFold(ident.PrimaryThumbprint, sha256Thumb(leaf)) {
			t.Fatalf("%s: thumbprint %s, want %s", c.regID, ident.PrimaryThumbprint, sha256Thumb(leaf))
		}
	}
}

// TestHandoffCSRNotConfigured: a CSR the service cannot issue for (the
// enrollment names no credentialPolicyName) is refused at the register as
// on the synchronous path: the operation fails with 400000, nothing waits
// in the outbox and the hub hears nothing.
func TestHandoffCSRNotConfigured(t *testing.T) {
	var ci *countingIssuer
	e := newHubEnv(t, 1, withCountingCA(t, &ci))
	hub := e.hubs[0]
	e.link(hub)
	en := symmetricEnrollment("cam-5", symKey(3), nil)
	en.IoTHubHostName = hub.HostName
	e.putEnrollment(en)
	id := e.mustConnect("cam-5", e.sas("cam-5", symKey(3), ""))
	_, der := csrFor(t, "cam-5")
	got := e.pollFinal(id, e.register(id, RegisterRequest{CSR: base64.StdEncoding.EncodeToString(der)}))
	if got.Status != "failed" || got.RegistrationState.ErrorCode != ErrorCodeCSRNotConfigured {
		t.Fatalf("final %s", encode(t, got))
	}
	if n, err := e.st.CountJobs(e.ctx); err != nil || n != 0 {
		t.Fatalf("%d jobs (%v)", n, err)
	}
	if len(hub.Requests()) != 0 || ci.n.Load() != 0 {
		t.Fatalf("hub requests %d, certificates issued %d", len(hub.Requests()), ci.n.Load())
	}
}

// TestHandoffCSRIssuerGone: a job whose register carried a CSR, worked on
// by a service that has no issuer (restarted with issuer none since), fails
// the registration as the register would have (400000) instead of
// crashing the worker.
func TestHandoffCSRIssuerGone(t *testing.T) {
	e := newHubEnv(t, 1)
	hub := e.hubs[0]
	e.link(hub)
	_, der := csrFor(t, "cam-6")
	d := &handoffJob{V: jobVersion, Registration: &store.Registration{RegistrationID: "cam-6", DeviceID: "cam-6"},
		Hub: hub.HostName, CSR: der, CSRField: store.CSRField2025}
	j := &store.Job{ID: "op-6", RegistrationID: "cam-6", CreatedAt: e.clock.Now()}
	o := e.svc.attempt(e.ctx, j, d, &jobSecret{}, e.svc.log)
	if !o.fail || o.code != ErrorCodeCSRNotConfigured || len(hub.Requests()) != 0 {
		t.Fatalf("outcome %+v, hub requests %d", o, len(hub.Requests()))
	}
}
