package provision

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/ekca"
	"github.com/tpmdps/dpsd/issuer"
	"github.com/tpmdps/dpsd/store"
)

// tpmGroup returns a TPM enrollment group trusting ca (root and intermediate).
func tpmGroupRecord(id string, ca *ekca.CA) *store.Group {
	return &store.Group{
		EnrollmentGroupID: id,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{
				EKCertificateRoots:         []string{string(ekca.PEM(ca.Root))},
				EKCertificateIntermediates: []string{string(ekca.PEM(ca.Intermediate))},
			}},
			IoTHubHostName:     "group-hub.azure-devices.net",
			ProvisioningStatus: store.StatusEnabled,
		},
	}
}

// ekKey is the device's EK as a crypto public key.
func (d *tpmDevice) ekKey() crypto.PublicKey {
	p, err := attest.ParsePublic(d.ekPublic())
	if err != nil {
		d.t.Fatal(err)
	}
	return p.PublicKey()
}

// keysWith is the device's keys with an EK certificate.
func (d *tpmDevice) keysWith(certDER []byte) *TPMKeys {
	k := d.keys()
	k.EndorsementKeyCertificate = b64(certDER)
	return k
}

// challengeWith asks for a challenge with keys and returns the answer.
func (e *env) challengeWith(regID string, keys *TPMKeys) Response {
	e.t.Helper()
	id := e.mustConnect(regID, nil)
	return e.svc.Register(e.ctx, id, RegisterRequest{TPM: keys}, "same-tracking-id")
}

// loginWith runs the challenge with keys, activates it in d's TPM and
// connects with the TPM-signed SAS.
func (e *env) loginWith(d *tpmDevice, regID string, keys *TPMKeys) Identity {
	e.t.Helper()
	resp := e.challengeWith(regID, keys)
	ch, ok := resp.Body.(*TPMChallenge)
	if resp.Status != 401 || !ok {
		e.t.Fatalf("challenge: status %d body %s", resp.Status, encode(e.t, resp.Body))
	}
	k, err := d.activate(ch.AuthenticationKey)
	if err != nil {
		e.t.Fatalf("activate challenge: %v", err)
	}
	defer k.close()
	return e.mustConnect(regID, k.sas(regID, e.clock.Now().Add(time.Hour), ch.KeyName))
}

// logged is an env whose log is kept, with its observer.
func loggedEnv(t *testing.T, mods ...func(*Config)) (*env, *testkit.LogBuffer, *recordingObserver) {
	logs := &testkit.LogBuffer{}
	obs := &recordingObserver{}
	mods = append([]func(*Config){func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.Observer = obs
	}}, mods...)
	return newEnv(t, mods...), logs, obs
}

// TestTPMGroupProvisions: a TPM with no individual enrollment provisions
// through a TPM group whose roots its EK certificate chains to, under the
// registration id derived from its EK, RSA and ECC; the hub key and its
// attestation hash work as for an individual enrollment.
func TestTPMGroupProvisions(t *testing.T) {
	for _, tc := range []struct {
		name string
		ek   devtpm.Alg
		srk  devtpm.SRKTemplate
	}{
		{"RSA", devtpm.RSA2048, devtpm.SRKRSAEmptyUnique},
		{"ECC", devtpm.ECCP256, devtpm.SRKECCP256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, _, obs := loggedEnv(t)
			ca := ekca.New(t, "vendor A")
			e.putGroup(tpmGroupRecord("Factory-A", ca))
			d := newTPMDevice(t, tc.ek, tc.srk)
			cert := ca.Issue(t, d.ekKey(), ekca.EK{})
			regID := d.registrationID()

			id := e.loginWith(d, regID, d.keysWith(cert))
			if id.Method != AuthTPM || id.GroupID != "Factory-A" || !strings.HasPrefix(id.ChallengeRef, "t3.") {
				t.Fatalf("identity %+v", id)
			}
			got := e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keysWith(cert)}))
			st := got.RegistrationState
			if got.Status != "assigned" || st.AssignedHub != "group-hub.azure-devices.net" || st.DeviceID != regID ||
				st.TPM == nil || st.TPM.EnrollmentGroupID != "Factory-A" || st.SymmetricKey != nil {
				t.Fatalf("final %s", encode(t, got))
			}
			rec, err := e.st.GetRegistration(e.ctx, regID)
			if err != nil || rec.EnrollmentGroupID != "Factory-A" || rec.AttestationType != store.AttestationTPM || len(rec.HubKey) != HubKeySize {
				t.Fatalf("record %+v %v", rec, err)
			}
			hub := hubKeyMAC(t, d, st.TPM.AuthenticationKey, rec.HubKey)
			// Again: the same EK keeps its hub key (the attestation hash rule).
			id2 := e.loginWith(d, regID, d.keysWith(cert))
			got2 := e.pollFinal(id2, e.register(id2, RegisterRequest{TPM: d.keysWith(cert)}))
			if hub2 := hubKeyMAC(t, d, got2.RegistrationState.TPM.AuthenticationKey, rec.HubKey); !bytes.Equal(hub, hub2) {
				t.Fatal("second registration carries another hub key")
			}
			// The group's registrations list the device.
			page, err := e.st.ListGroupRegistrations(e.ctx, "factory-a", store.Query{})
			if err != nil || len(page.Items) != 1 || page.Items[0].RegistrationID != regID {
				t.Fatalf("group registrations %+v %v", page.Items, err)
			}
			// Each challenge request counted its certificate once; the registers did not.
			if !slices.Equal(obs.ekCerts, []string{EKCertValid, EKCertValid}) {
				t.Fatalf("EK certificate outcomes %v", obs.ekCerts)
			}
		})
	}
}

// TestTPMGroupRefusals: everything a TPM group refuses is the one 401 of
// an unknown id, with the reason in the log and the certificate's outcome
// counted.
func TestTPMGroupRefusals(t *testing.T) {
	e, logs, obs := loggedEnv(t)
	ca := ekca.New(t, "vendor A")
	other := ekca.New(t, "vendor B")
	e.putGroup(tpmGroupRecord("factory-a", ca))
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	now := e.clock.Now()
	stranger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	baseline := e.challengeWith("unknown-id", d.keys())
	want := encode(t, errorBody(t, baseline, ErrorCodeUnauthorized))

	for _, tc := range []struct {
		name    string
		regID   string
		keys    *TPMKeys
		outcome string // "" when no certificate is counted
		reason  string
	}{
		{"no certificate", regID, d.keys(), "", "no EK certificate was sent"},
		{"another vendor's certificate", regID, d.keysWith(other.Issue(t, d.ekKey(), ekca.EK{})), EKCertUntrusted, "does not chain"},
		{"certificate of another key", regID, d.keysWith(ca.Issue(t, &stranger.PublicKey, ekca.EK{})), EKCertKeyMismatch, "another key than the endorsement key"},
		{"expired certificate", regID, d.keysWith(ca.Issue(t, d.ekKey(), ekca.EK{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})), EKCertExpired, "validity"},
		{"not yet valid", regID, d.keysWith(ca.Issue(t, d.ekKey(), ekca.EK{NotBefore: now.Add(time.Hour)})), EKCertExpired, "validity"},
		{"not base64", regID, &TPMKeys{EndorsementKey: b64(d.ekPublic()), StorageRootKey: b64(d.srk.Public()), EndorsementKeyCertificate: "!!"}, EKCertMalformed, "not base64"},
		{"not a certificate", regID, d.keysWith([]byte("hello")), EKCertMalformed, "bad EK certificate"},
		{"another registration id", "chosen-name", d.keysWith(ca.Issue(t, d.ekKey(), ekca.EK{})), EKCertValid, "not the one derived from the EK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(obs.ekCerts)
			resp := e.challengeWith(tc.regID, tc.keys)
			if got := encode(t, errorBody(t, resp, ErrorCodeUnauthorized)); got != want {
				t.Fatalf("answer differs from an unknown id's:\n got %s\nwant %s", got, want)
			}
			counted := obs.ekCerts[before:]
			if tc.outcome == "" && len(counted) != 0 || tc.outcome != "" && !slices.Equal(counted, []string{tc.outcome}) {
				t.Fatalf("outcomes %v, want %q", counted, tc.outcome)
			}
			if !strings.Contains(logs.String(), tc.reason) {
				t.Fatalf("log lacks %q:\n%s", tc.reason, logs.String())
			}
		})
	}
}

// TestTPMGroupFilters: manufacturer, model and the EK allow-list narrow a
// group; the first group in id order that admits a TPM is the one.
func TestTPMGroupFilters(t *testing.T) {
	e, logs, _ := loggedEnv(t)
	ca := ekca.New(t, "vendor A")
	d := newTPMDevice(t, devtpm.ECCP256, devtpm.SRKECCP256)
	regID := d.registrationID()
	cert := ca.Issue(t, d.ekKey(), ekca.EK{Manufacturer: "id:494E5443", Model: "SLB9670", Version: "id:0010"})
	ekp, err := attest.ParsePublic(d.ekPublic())
	if err != nil {
		t.Fatal(err)
	}
	ekHash, err := attest.EKHash(ekp)
	if err != nil {
		t.Fatal(err)
	}
	with := func(id string, f func(*store.TPMAttestation)) *store.Group {
		g := tpmGroupRecord(id, ca)
		f(g.Attestation.TPM)
		return g
	}
	e.putGroup(with("a-other-maker", func(a *store.TPMAttestation) { a.TPMManufacturer = "id:53544D20" }))
	e.putGroup(with("b-other-model", func(a *store.TPMAttestation) { a.TPMModel = "ST33" }))
	e.putGroup(with("c-other-eks", func(a *store.TPMAttestation) { a.EndorsementKeyHashes = []string{strings.Repeat("ab", 32)} }))
	e.putGroup(with("d-this-one", func(a *store.TPMAttestation) {
		a.TPMManufacturer, a.TPMModel = "ID:494e5443", "slb9670"
		a.EndorsementKeyHashes = []string{strings.Repeat("cd", 32), strings.ToUpper(hex.EncodeToString(ekHash[:]))}
	}))
	e.putGroup(with("e-also", func(*store.TPMAttestation) {}))
	id := e.loginWith(d, regID, d.keysWith(cert))
	if id.GroupID != "d-this-one" {
		t.Fatalf("admitted by %q, want d-this-one", id.GroupID)
	}
	if got := e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keysWith(cert)})); got.Status != "assigned" {
		t.Fatalf("final %s", encode(t, got))
	}
	// Without d and e nothing admits it, and the log says why for each group.
	for _, g := range []string{"d-this-one", "e-also"} {
		if err := e.st.DeleteGroup(e.ctx, g, ""); err != nil {
			t.Fatal(err)
		}
	}
	errorBody(t, e.challengeWith(regID, d.keysWith(cert)), ErrorCodeUnauthorized)
	for _, why := range []string{`a-other-maker: TPM manufacturer "id:494E5443" is not "id:53544D20"`,
		`b-other-model: TPM model "SLB9670" is not "ST33"`, "c-other-eks: EK is not on its allow-list"} {
		if !strings.Contains(strings.ReplaceAll(logs.String(), `\"`, `"`), why) {
			t.Errorf("log lacks %q:\n%s", why, logs.String())
		}
	}
}

// TestTPMGroupChallengeBinding: the SAS of a group challenge authenticates
// for that group only and while it exists with no individual enrollment
// of the id; the register repeats the decision with the certificate.
func TestTPMGroupChallengeBinding(t *testing.T) {
	e, _, _ := loggedEnv(t)
	ca := ekca.New(t, "vendor A")
	e.putGroup(tpmGroupRecord("factory-a", ca))
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	cert := ca.Issue(t, d.ekKey(), ekca.EK{})
	token := func() (*TPMChallenge, []byte) {
		resp := e.challengeWith(regID, d.keysWith(cert))
		ch := resp.Body.(*TPMChallenge)
		k, err := d.activate(ch.AuthenticationKey)
		if err != nil {
			t.Fatal(err)
		}
		defer k.close()
		return ch, k.sas(regID, e.clock.Now().Add(time.Hour), ch.KeyName)
	}

	// A group challenge authenticates once.
	_, once := token()
	if id := e.mustConnect(regID, once); id.GroupID != "factory-a" {
		t.Fatalf("identity %+v", id)
	}
	if _, err := e.connect(regID, once); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("replayed group SAS: %v", err)
	}
	// The key of a group challenge answers neither the individual reference
	// with the same data nor the same reference naming another group.
	e.putGroup(tpmGroupRecord("factory-b", ca))
	ch, _ := token()
	k, err := d.activate(ch.AuthenticationKey)
	if err != nil {
		t.Fatal(err)
	}
	cr, err := parseChallengeRef(ch.KeyName)
	if err != nil {
		t.Fatal(err)
	}
	asIndividual, err := newChallengeRef(bytes.NewReader(cr.nonce[:]), cr.run, cr.expires)
	if err != nil {
		t.Fatal(err)
	}
	asOtherGroup, err := newGroupChallengeRef(bytes.NewReader(cr.nonce[:]), cr.run, cr.expires, digestOfGroup("factory-b"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{asIndividual, asOtherGroup} {
		if _, err := e.connect(regID, k.sas(regID, e.clock.Now().Add(time.Hour), ref)); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "does not verify") {
			t.Fatalf("group challenge key accepted for %s: %v", ref, err)
		}
	}
	k.close()
	if err := e.st.DeleteGroup(e.ctx, "factory-b", ""); err != nil {
		t.Fatal(err)
	}
	// An individual enrollment created since the group challenge takes precedence.
	_, tok := token()
	e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
	if _, err := e.connect(regID, tok); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "individual enrollment was created") {
		t.Fatalf("group SAS with an individual enrollment now present: %v", err)
	}
	if err := e.st.DeleteEnrollment(e.ctx, regID, ""); err != nil {
		t.Fatal(err)
	}
	// A group deleted since the challenge: refused.
	_, tok = token()
	if err := e.st.DeleteGroup(e.ctx, "factory-a", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.connect(regID, tok); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "no longer exists") {
		t.Fatalf("SAS of a deleted group: %v", err)
	}
	// A group recreated under the same id with other roots: the SAS still
	// authenticates (same group), but the register is refused.
	g := e.putGroup(tpmGroupRecord("factory-a", ca))
	_, tok = token()
	id := e.mustConnect(regID, tok)
	other := ekca.New(t, "vendor B")
	g.Attestation.TPM.EKCertificateRoots = []string{string(ekca.PEM(other.Root))}
	if _, err := e.st.PutGroup(e.ctx, g, ""); err != nil {
		t.Fatal(err)
	}
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{TPM: d.keysWith(cert)}, "tr"), ErrorCodeUnauthorized)
	// A register without the certificate on a group connection: refused.
	g.Attestation.TPM.EKCertificateRoots = []string{string(ekca.PEM(ca.Root))}
	if _, err := e.st.PutGroup(e.ctx, g, ""); err != nil {
		t.Fatal(err)
	}
	_, tok = token()
	id = e.mustConnect(regID, tok)
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{TPM: d.keys()}, "tr"), ErrorCodeUnauthorized)
	// Another group admitting first now (id order): refused, the connection authenticated for factory-a.
	e.putGroup(tpmGroupRecord("a-first", ca))
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{TPM: d.keysWith(cert)}, "tr"), ErrorCodeUnauthorized)
}

// TestTPMGroupReplayedCertificate: a genuine certificate of another TPM
// gets a challenge only for that TPM's EK, which this TPM cannot open;
// sent with this TPM's own EK it is a key mismatch.
func TestTPMGroupReplayedCertificate(t *testing.T) {
	e, _, obs := loggedEnv(t)
	ca := ekca.New(t, "vendor A")
	e.putGroup(tpmGroupRecord("factory-a", ca))
	attacker := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	// The victim TPM's EK: an RSA key the attacker's TPM does not hold,
	// in the TCG EK template.
	victimKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	victimEK := ekWithModulus(t, attacker.ekPublic(), victimKey.N)
	victimCert := ca.Issue(t, &victimKey.PublicKey, ekca.EK{})
	victimID := attest.RegistrationID(victimEK)

	// Victim's EK and certificate, attacker's SRK: a challenge, for the victim's EK.
	resp := e.challengeWith(victimID, &TPMKeys{EndorsementKey: b64(victimEK), StorageRootKey: b64(attacker.srk.Public()), EndorsementKeyCertificate: b64(victimCert)})
	ch, ok := resp.Body.(*TPMChallenge)
	if !ok {
		t.Fatalf("challenge: %d %s", resp.Status, encode(t, resp.Body))
	}
	if _, err := attacker.activate(ch.AuthenticationKey); err == nil {
		t.Fatal("the attacker's TPM opened a challenge built for another TPM's EK")
	}
	// The victim's certificate with the attacker's own EK: refused.
	before := len(obs.ekCerts)
	errorBody(t, e.challengeWith(attacker.registrationID(), attacker.keysWith(victimCert)), ErrorCodeUnauthorized)
	if !slices.Equal(obs.ekCerts[before:], []string{EKCertKeyMismatch}) {
		t.Fatalf("outcomes %v", obs.ekCerts[before:])
	}
}

// ekWithModulus returns the RSA EK TPM2B_PUBLIC ek with its modulus replaced by n.
func ekWithModulus(t testing.TB, ek []byte, n interface{ FillBytes([]byte) []byte }) []byte {
	t.Helper()
	p, err := attest.ParsePublic(ek)
	if err != nil {
		t.Fatal(err)
	}
	out := append([]byte(nil), ek...)
	i := bytes.Index(out, p.PublicKey().(*rsa.PublicKey).N.Bytes())
	if i < 0 {
		t.Fatal("modulus not found")
	}
	copy(out[i:], n.FillBytes(make([]byte, 256)))
	return out
}

// TestRequireEKCertificate: an individual enrollment that requires an EK
// certificate admits only one that chains to the service's TPM roots; one
// that does not require it ignores a bad certificate.
func TestRequireEKCertificate(t *testing.T) {
	ca := ekca.New(t, "vendor A")
	groupCA := ekca.New(t, "vendor B")
	e, logs, _ := loggedEnv(t, func(c *Config) {
		c.TPMRoots = &attest.CertBundle{Roots: []*x509.Certificate{ca.Root}, Intermediates: []*x509.Certificate{ca.Intermediate}}
	})
	e.putGroup(tpmGroupRecord("vendor-b-group", groupCA))
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := "required-device"
	en := tpmEnrollment(regID, d.ekPublic())
	en.Attestation.TPM.RequireEKCertificate = true
	e.putEnrollment(en)
	good := ca.Issue(t, d.ekKey(), ekca.EK{})
	for name, keys := range map[string]*TPMKeys{
		"none":           d.keys(),
		"group's vendor": d.keysWith(groupCA.Issue(t, d.ekKey(), ekca.EK{})),
		"expired":        d.keysWith(ca.Issue(t, d.ekKey(), ekca.EK{NotAfter: e.clock.Now().Add(-time.Minute)})),
	} {
		errorBody(t, e.challengeWith(regID, keys), ErrorCodeUnauthorized)
		if !strings.Contains(logs.String(), "the enrollment requires") {
			t.Fatalf("%s: log lacks the reason", name)
		}
	}
	id := e.loginWith(d, regID, d.keysWith(good))
	if id.GroupID != "" {
		t.Fatalf("identity %+v", id)
	}
	// The register must carry it too.
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{TPM: d.keys()}, "tr"), ErrorCodeUnauthorized)
	if got := e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keysWith(good)})); got.Status != "assigned" {
		t.Fatalf("final %s", encode(t, got))
	}
	// Without the requirement, a certificate that proves nothing is ignored.
	plain := tpmEnrollment("plain-device", d.ekPublic())
	e.putEnrollment(plain)
	id = e.loginWith(d, "plain-device", d.keysWith([]byte("not a certificate")))
	if got := e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keysWith([]byte("x"))})); got.Status != "assigned" {
		t.Fatalf("final %s", encode(t, got))
	}
}

// TestEKCertificateOutcomeIgnoresID: the certificate's outcome (metrics)
// and the answer are the same for an enrolled id with another EK, an id
// with a symmetric-key enrollment and an unknown id: the check runs before,
// and apart from, the lookup of the id.
func TestEKCertificateOutcomeIgnoresID(t *testing.T) {
	e, _, obs := loggedEnv(t)
	ca := ekca.New(t, "vendor A")
	other := ekca.New(t, "vendor B")
	e.putGroup(tpmGroupRecord("factory-a", ca))
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	e.putEnrollment(tpmEnrollment("enrolled-other-ek", otherEK(t)))
	e.putEnrollment(symmetricEnrollment("enrolled-sym", symKey(3), nil))
	for _, cert := range [][]byte{ca.Issue(t, d.ekKey(), ekca.EK{}), other.Issue(t, d.ekKey(), ekca.EK{}), []byte("junk")} {
		var answers, outcomes []string
		for _, rid := range []string{"enrolled-other-ek", "enrolled-sym", "unknown-id"} {
			before := len(obs.ekCerts)
			answers = append(answers, encode(t, errorBody(t, e.challengeWith(rid, d.keysWith(cert)), ErrorCodeUnauthorized)))
			outcomes = append(outcomes, fmt.Sprint(obs.ekCerts[before:]))
		}
		if answers[0] != answers[1] || answers[0] != answers[2] || outcomes[0] != outcomes[1] || outcomes[0] != outcomes[2] || outcomes[0] == "[]" {
			t.Fatalf("answers or outcomes depend on the id: %v %v", answers, outcomes)
		}
	}
}

// TestEKCertificateVerdictExpires: a cached acceptance ends with its
// chain's validity, and a new groups revision is judged afresh.
func TestEKCertificateVerdictExpires(t *testing.T) {
	e, _, obs := loggedEnv(t)
	ca := ekca.New(t, "vendor A")
	g := e.putGroup(tpmGroupRecord("factory-a", ca))
	d := newTPMDevice(t, devtpm.ECCP256, devtpm.SRKECCP256)
	regID := d.registrationID()
	cert := ca.Issue(t, d.ekKey(), ekca.EK{NotAfter: e.clock.Now().Add(time.Hour)})
	for range 3 {
		if resp := e.challengeWith(regID, d.keysWith(cert)); resp.Status != 401 || resp.Body.(*TPMChallenge) == nil {
			t.Fatalf("challenge %d", resp.Status)
		}
	}
	e.clock.Advance(2 * time.Hour)
	errorBody(t, e.challengeWith(regID, d.keysWith(cert)), ErrorCodeUnauthorized)
	if want := []string{EKCertValid, EKCertValid, EKCertValid, EKCertExpired}; !slices.Equal(obs.ekCerts, want) {
		t.Fatalf("outcomes %v, want %v", obs.ekCerts, want)
	}
	// Roots replaced: the cached verdict is not reused.
	fresh := ca.Issue(t, d.ekKey(), ekca.EK{})
	if resp := e.challengeWith(regID, d.keysWith(fresh)); resp.Status != 401 || resp.Body.(*TPMChallenge) == nil {
		t.Fatalf("fresh certificate: %d", resp.Status)
	}
	other := ekca.New(t, "vendor B")
	g.Attestation.TPM.EKCertificateRoots = []string{string(ekca.PEM(other.Root))}
	if _, err := e.st.PutGroup(e.ctx, g, ""); err != nil {
		t.Fatal(err)
	}
	errorBody(t, e.challengeWith(regID, d.keysWith(fresh)), ErrorCodeUnauthorized)
	if last := obs.ekCerts[len(obs.ekCerts)-1]; last != EKCertUntrusted {
		t.Fatalf("after the roots changed: %s", last)
	}
}

// TestTPMGroupIssuesCertificate: a TPM group with a credential policy
// issues its devices certificates from their CSRs, as an individual TPM
// enrollment does, with the hub key blob in the same answer.
func TestTPMGroupIssuesCertificate(t *testing.T) {
	var ca *issuer.CA
	e := newEnv(t, withCA(t, &ca))
	eca := ekca.New(t, "vendor A")
	g := tpmGroupRecord("factory-a", eca)
	g.CredentialPolicyName = "tpm-fleet"
	g.CertificatePolicy = &store.CertificatePolicy{ValidityDays: 90}
	e.putGroup(g)
	d := newTPMDevice(t, devtpm.ECCP256, devtpm.SRKECCP256)
	regID := d.registrationID()
	cert := eca.Issue(t, d.ekKey(), ekca.EK{})
	id := e.loginWith(d, regID, d.keysWith(cert))
	key, der := csrFor(t, regID)
	req := RegisterRequest{TPM: d.keysWith(cert), CSR: base64.StdEncoding.EncodeToString(der)}
	got := e.pollFinal(id, e.register(id, req))
	if got.Status != "assigned" || got.RegistrationState.TPM == nil || got.RegistrationState.TPM.EnrollmentGroupID != "factory-a" ||
		got.RegistrationState.TPM.AuthenticationKey == "" {
		t.Fatalf("final %s", encode(t, got))
	}
	chain := chainOf(t, got.RegistrationState)
	checkIssued(t, chain, ca, &key.PublicKey, regID, regID, e.clock.Now())
	if !chain[0].NotAfter.Equal(e.clock.Now().Add(90 * 24 * time.Hour)) {
		t.Fatalf("notAfter %v: the group's certificate policy was not applied", chain[0].NotAfter)
	}
}

// TestTPMGroupCluster: on a shared etcd store a group challenge issued by
// one node authenticates on another, once across the nodes, and the
// register on a third is admitted by the same group (each node builds its
// groups snapshot and EK trust from the shared store).
func TestTPMGroupCluster(t *testing.T) {
	nodes := clusterNodes(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	ca := ekca.New(t, "vendor A")
	if _, err := a.svc.cfg.Store.PutGroup(context.Background(), tpmGroupRecord("factory-a", ca), ""); err != nil {
		t.Fatal(err)
	}
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	cert := ca.Issue(t, d.ekKey(), ekca.EK{})
	resp := a.challengeWith(regID, d.keysWith(cert))
	ch, ok := resp.Body.(*TPMChallenge)
	if !ok {
		t.Fatalf("challenge: %d %s", resp.Status, encode(t, resp.Body))
	}
	k, err := d.activate(ch.AuthenticationKey)
	if err != nil {
		t.Fatal(err)
	}
	token := k.sas(regID, b.clock.Now().Add(time.Hour), ch.KeyName)
	k.close()
	id := b.mustConnect(regID, token)
	if id.GroupID != "factory-a" {
		t.Fatalf("identity %+v", id)
	}
	for _, n := range nodes {
		if _, err := n.connect(regID, token); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "already used") {
			t.Fatalf("replayed group SAS: %v", err)
		}
	}
	if got := a.pollFinal(id, c.register(id, RegisterRequest{TPM: d.keysWith(cert)})); got.Status != "assigned" ||
		got.RegistrationState.TPM == nil || got.RegistrationState.TPM.EnrollmentGroupID != "factory-a" {
		t.Fatalf("final %s", encode(t, got))
	}
}
