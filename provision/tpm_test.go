package provision

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/store"
)

func tpmEnrollment(regID string, ek []byte) *store.Enrollment {
	return &store.Enrollment{
		RegistrationID: regID,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation:        store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: b64(ek)}},
			ProvisioningStatus: store.StatusEnabled,
		},
	}
}

var refPattern = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,128}$`)

// challenge asks for a TPM challenge on a restricted session and returns it.
func (e *env) challenge(d *tpmDevice, regID string) *TPMChallenge {
	e.t.Helper()
	id := e.mustConnect(regID, nil)
	if id.Method != AuthRestricted {
		e.t.Fatalf("no-password connect: %+v", id)
	}
	resp := e.svc.Register(e.ctx, id, RegisterRequest{RegistrationID: regID, TPM: d.keys()}, "tr-ch")
	ch, ok := resp.Body.(*TPMChallenge)
	if resp.Status != 401 || !ok {
		e.t.Fatalf("challenge: status %d body %s", resp.Status, encode(e.t, resp.Body))
	}
	if ch.Message != "Authorization required, resend request using supplied key" || !refPattern.MatchString(ch.KeyName) || ch.AuthenticationKey == "" {
		e.t.Fatalf("challenge body %s", encode(e.t, ch))
	}
	return ch
}

// challengeToken asks for a TPM challenge, activates it in the TPM and
// returns the challenge and the TPM-signed SAS token for the reconnect
// (valid for an hour).
func (e *env) challengeToken(d *tpmDevice, regID string) (*TPMChallenge, []byte) {
	e.t.Helper()
	ch := e.challenge(d, regID)
	k, err := d.activate(ch.AuthenticationKey)
	if err != nil {
		e.t.Fatalf("activate challenge: %v", err)
	}
	defer k.close()
	return ch, k.sas(regID, e.clock.Now().Add(time.Hour), ch.KeyName)
}

// tpmLogin runs the challenge, activates it in the TPM and connects with a
// TPM-signed SAS, returning the authenticated identity.
func (e *env) tpmLogin(d *tpmDevice, regID string) Identity {
	e.t.Helper()
	ch, token := e.challengeToken(d, regID)
	id := e.mustConnect(regID, token)
	if id.Method != AuthTPM || id.ChallengeRef != ch.KeyName || id.RegistrationID != strings.ToLower(regID) {
		e.t.Fatalf("TPM identity %+v", id)
	}
	return id
}

func TestTPMFlow(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ek       devtpm.Alg
		srk      devtpm.SRKTemplate
		blobSize int
	}{
		{"RSA", devtpm.RSA2048, devtpm.SRKRSAEmptyUnique, 766},
		{"RSA-zero-unique-SRK", devtpm.RSA2048, devtpm.SRKRSAZeroUnique, 766},
		{"ECC", devtpm.ECCP256, devtpm.SRKECCP256, 390},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			d := newTPMDevice(t, tc.ek, tc.srk)
			regID := d.registrationID()
			en := tpmEnrollment(regID, d.ekPublic())
			en.DeviceID = "tpm-device"
			e.putEnrollment(en)

			ch, token := e.challengeToken(d, regID)
			id := e.mustConnect(regID, token)
			if id.Method != AuthTPM || id.ChallengeRef != ch.KeyName {
				t.Fatalf("identity %+v", id)
			}
			// A challenge authenticates once.
			if _, err := e.connect(regID, token); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "already used") {
				t.Fatalf("replayed TPM SAS: %v", err)
			}

			opID := e.register(id, RegisterRequest{TPM: d.keys(), Payload: []byte(`{"fw":"1.0"}`)})
			got := e.pollFinal(id, opID)
			st := got.RegistrationState
			if got.Status != "assigned" || st.DeviceID != "tpm-device" || !containsFold(e.svc.cfg.Hubs, st.AssignedHub) ||
				st.Substatus != SubstatusInitialAssignment || st.TPM == nil || st.SymmetricKey != nil {
				t.Fatalf("final %s", encode(t, got))
			}
			if raw := mustB64(t, st.TPM.AuthenticationKey); len(raw) != tc.blobSize {
				t.Errorf("hub-key blob has %d bytes, want %d", len(raw), tc.blobSize)
			}
			rec, err := e.st.GetRegistration(e.ctx, regID)
			if err != nil || len(rec.HubKey) != HubKeySize || rec.AttestationType != store.AttestationTPM {
				t.Fatalf("record %+v %v", rec, err)
			}
			hub := hubKeyMAC(t, d, st.TPM.AuthenticationKey, rec.HubKey)

			// Re-registration on a fresh TPM login keeps the hub and the hub key.
			id2 := e.tpmLogin(d, regID)
			got2 := e.pollFinal(id2, e.register(id2, RegisterRequest{TPM: d.keys()}))
			if got2.RegistrationState.AssignedHub != st.AssignedHub || got2.RegistrationState.TPM == nil {
				t.Fatalf("re-registration %s", encode(t, got2))
			}
			rec2, err := e.st.GetRegistration(e.ctx, regID)
			if err != nil || !bytes.Equal(rec2.HubKey, rec.HubKey) || !rec2.CreatedAt.Equal(rec.CreatedAt) {
				t.Fatalf("hub key or creation time changed on re-registration: %v", err)
			}
			if hub2 := hubKeyMAC(t, d, got2.RegistrationState.TPM.AuthenticationKey, rec.HubKey); !bytes.Equal(hub, hub2) {
				t.Fatal("second blob carries another key")
			}
		})
	}
}

// hubKeyMAC activates a hub-key blob in the TPM and checks that the TPM's
// HMAC with it equals HMAC-SHA256(hubKey) in software.
func hubKeyMAC(t *testing.T, d *tpmDevice, blob string, hubKey []byte) []byte {
	t.Helper()
	k, err := d.activate(blob)
	if err != nil {
		t.Fatalf("activate hub-key blob: %v", err)
	}
	defer k.close()
	msg := []byte("dps-test/devices/x\n1700000000")
	got := k.mac(msg)
	m := hmac.New(sha256.New, hubKey)
	m.Write(msg)
	if want := m.Sum(nil); !hmac.Equal(got, want) {
		t.Fatalf("TPM HMAC with the delivered key %x != HMAC with the recorded hub key %x", got, want)
	}
	return got
}

func mustB64(t testing.TB, s string) []byte {
	t.Helper()
	raw, err := b64dec(s)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestTPMChallengeNotCancelledByLaterOnes(t *testing.T) {
	e := newEnv(t)
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
	first := e.challenge(d, regID)
	refs := map[string]bool{first.KeyName: true}
	for range 200 {
		ch := e.challenge(d, regID) // an outsider knowing the EK can do this
		if refs[ch.KeyName] {
			t.Fatalf("reference %q issued twice", ch.KeyName)
		}
		refs[ch.KeyName] = true
	}
	k, err := d.activate(first.AuthenticationKey)
	if err != nil {
		t.Fatal(err)
	}
	defer k.close()
	if id := e.mustConnect(regID, k.sas(regID, e.clock.Now().Add(time.Hour), first.KeyName)); id.Method != AuthTPM {
		t.Fatalf("identity %+v", id)
	}
}

func TestTPMChallengeRefusals(t *testing.T) {
	e := newEnv(t)
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
	e.putEnrollment(tpmEnrollment("wrong-ek", otherEK(t)))
	e.putEnrollment(symmetricEnrollment("sym-1", symKey(1), nil))

	// Unknown id, wrong EK and a non-TPM enrollment: byte-identical answers.
	var bodies []string
	for _, rid := range []string{"unknown-id", "wrong-ek", "sym-1"} {
		id := e.mustConnect(rid, nil)
		resp := e.svc.Register(e.ctx, id, RegisterRequest{TPM: d.keys()}, "same-tracking-id")
		errorBody(t, resp, ErrorCodeUnauthorized)
		bodies = append(bodies, encode(t, resp.Body))
	}
	if bodies[0] != bodies[1] || bodies[0] != bodies[2] {
		t.Fatalf("refusals differ:\n%s", strings.Join(bodies, "\n"))
	}

	restricted := e.mustConnect(regID, nil)
	// A restricted session may only ask for a challenge.
	errorBody(t, e.svc.Register(e.ctx, restricted, RegisterRequest{}, "tr"), ErrorCodeUnauthorized)
	// Bad key bytes are a 400, before any lookup.
	truncated := b64(d.ekPublic()[:len(d.ekPublic())-1])
	trailing := b64(append(append([]byte(nil), d.ekPublic()...), 0))
	for name, keys := range map[string]*TPMKeys{
		"not base64":   {EndorsementKey: "!!", StorageRootKey: b64(d.srk.Public())},
		"truncated EK": {EndorsementKey: truncated, StorageRootKey: b64(d.srk.Public())},
		"trailing EK":  {EndorsementKey: trailing, StorageRootKey: b64(d.srk.Public())},
		"missing SRK":  {EndorsementKey: b64(d.ekPublic())},
		"garbage SRK":  {EndorsementKey: b64(d.ekPublic()), StorageRootKey: b64([]byte{0, 2, 1, 2})},
	} {
		for _, rid := range []string{regID, "unknown-id"} {
			id := e.mustConnect(rid, nil)
			if resp := e.svc.Register(e.ctx, id, RegisterRequest{TPM: keys}, "tr"); resp.Status != 400 {
				t.Errorf("%s for %s: status %d %s", name, rid, resp.Status, encode(t, resp.Body))
			} else {
				errorBody(t, resp, ErrorCodeBadRequest)
			}
		}
	}

	// An expired reference is refused even with a valid signature.
	_, token := e.challengeToken(d, regID)
	e.clock.Advance(DefaultChallengeLifetime + time.Second)
	if _, err := e.connect(regID, token); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired challenge: %v", err)
	}

	// A challenge is bound to its registration id: another id's enrollment
	// with the same EK cannot use it.
	e.putEnrollment(tpmEnrollment("twin", d.ekPublic()))
	ch := e.challenge(d, regID)
	k, err := d.activate(ch.AuthenticationKey)
	if err != nil {
		t.Fatal(err)
	}
	defer k.close()
	if _, err := e.connect("twin", k.sas("twin", e.clock.Now().Add(time.Hour), ch.KeyName)); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("challenge of %s authenticated twin: %v", regID, err)
	}
	// A forged reference (other expiry) changes the key: refused.
	forged, err := parseChallengeRef(ch.KeyName)
	if err != nil {
		t.Fatal(err)
	}
	forgedRef, err := newChallengeRef(bytes.NewReader(forged.nonce[:]), forged.run, forged.expires.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.connect(regID, k.sas(regID, e.clock.Now().Add(time.Hour), forgedRef)); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("forged reference: %v", err)
	}
	// A reference of another run (a restart) is refused, even with the same secret.
	other := "t2." + strings.Repeat("A", 43)
	if _, err := e.connect(regID, k.sas(regID, e.clock.Now().Add(time.Hour), other)); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "restarted") {
		t.Fatalf("reference of another run: %v", err)
	}
}

func TestTPMAuthenticatedRegister(t *testing.T) {
	e := newEnv(t)
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
	id := e.tpmLogin(d, regID)
	// Without tpm: 400.
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{}, "tr"), ErrorCodeBadRequest)
	// Bad EK bytes: 400.
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{TPM: &TPMKeys{EndorsementKey: b64([]byte{1, 2, 3}), StorageRootKey: b64(d.srk.Public())}}, "tr"), ErrorCodeBadRequest)
	// Another EK: 401.
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{TPM: &TPMKeys{EndorsementKey: b64(otherEK(t)), StorageRootKey: b64(d.srk.Public())}}, "tr"), ErrorCodeUnauthorized)
	// Another id in the body: 400.
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{RegistrationID: "someone-else", TPM: d.keys()}, "tr"), ErrorCodeBadRequest)
	// And then it works.
	if got := e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keys()})); got.Status != "assigned" {
		t.Fatalf("final %s", encode(t, got))
	}
}

func TestTPMDisabledEnrollment(t *testing.T) {
	e := newEnv(t)
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	en := tpmEnrollment(regID, d.ekPublic())
	en.ProvisioningStatus = store.StatusDisabled
	e.putEnrollment(en)
	id := e.tpmLogin(d, regID) // a disabled enrollment still gets the challenge
	got := e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keys()}))
	if got.Status != "disabled" || got.RegistrationState.TPM != nil || got.RegistrationState.AssignedHub != "" {
		t.Fatalf("disabled %s", encode(t, got))
	}
}

func TestTPMEnrollmentRecreatedGetsNewHubKey(t *testing.T) {
	e := newEnv(t)
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
	id := e.tpmLogin(d, regID)
	e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keys()}))
	rec, err := e.st.GetRegistration(e.ctx, regID)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.DeleteEnrollment(e.ctx, regID, ""); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Second)
	e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
	id = e.tpmLogin(d, regID)
	e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keys()}))
	rec2, err := e.st.GetRegistration(e.ctx, regID)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(rec.HubKey, rec2.HubKey) || !rec2.CreatedAt.After(rec.CreatedAt) {
		t.Fatal("a re-created enrollment inherited the earlier device's hub key")
	}
}

func TestHashedAllocationEndToEnd(t *testing.T) {
	hubs := []string{"hub-a.azure-devices.net", "hub-b.azure-devices.net", "hub-c.azure-devices.net"}
	e := newEnv(t, func(c *Config) { c.Hubs = hubs })
	groupKey := symKey(4)
	e.putGroup(&store.Group{EnrollmentGroupID: "fleet", EnrollmentSettings: store.EnrollmentSettings{AllocationPolicy: "hashed", Attestation: store.Attestation{
		Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: b64(groupKey)}}}})
	counts := map[string]int{}
	first := map[string]string{}
	for i := range 60 {
		rid := fmt.Sprintf("sensor-%d", i)
		id := e.mustConnect(rid, e.sas(rid, deriveKey(groupKey, rid), ""))
		st := e.pollFinal(id, e.register(id, RegisterRequest{})).RegistrationState
		counts[st.AssignedHub]++
		first[rid] = st.AssignedHub
	}
	for _, h := range hubs {
		if counts[h] < 5 {
			t.Errorf("hub %s got %d of 60 devices: %v", h, counts[h], counts)
		}
	}
	// A fresh service on the same store (a restart) allocates the same way.
	svc2, err := New(e.svc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.svc = svc2
	for rid, hub := range first {
		id := e.mustConnect(rid, e.sas(rid, deriveKey(groupKey, rid), ""))
		if got := e.pollFinal(id, e.register(id, RegisterRequest{})).RegistrationState.AssignedHub; got != hub {
			t.Fatalf("%s moved from %s to %s", rid, hub, got)
		}
	}
}

func TestTPMEKComparedByKeyNotBytes(t *testing.T) {
	e := newEnv(t)
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	// The same public key in another encoding (no authPolicy): still the device's EK.
	pub2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](d.ekPublic())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := pub2b.Contents()
	if err != nil {
		t.Fatal(err)
	}
	variant := *pub
	variant.AuthPolicy = tpm2.TPM2BDigest{}
	reenc := tpm2.Marshal(tpm2.New2B(variant))
	if bytes.Equal(reenc, d.ekPublic()) {
		t.Fatal("variant encoding is identical")
	}
	e.putEnrollment(tpmEnrollment(regID, reenc))
	id := e.tpmLogin(d, regID)
	if got := e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keys()})); got.Status != "assigned" {
		t.Fatalf("final %s", encode(t, got))
	}
}

func TestTPMChallengeUsedOnceUnderConcurrency(t *testing.T) {
	e := newEnv(t)
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
	_, token := e.challengeToken(d, regID)
	const n = 8
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := e.connect(regID, token)
			errs <- err
		}()
	}
	ok := 0
	for range n {
		err := <-errs
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrNotAuthorized):
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d concurrent uses of one challenge authenticated, want 1", ok, n)
	}
}

// A challenge can be answered only in the run of the service that issued it:
// after a restart (a new Service on the same store and secret) the device is
// refused with a reason and succeeds with a fresh challenge.
func TestTPMChallengeFromEarlierRun(t *testing.T) {
	e := newEnv(t)
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
	_, token := e.challengeToken(d, regID)

	restarted, err := New(e.svc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if restarted.run == e.svc.run {
		t.Fatal("two runs have the same run id")
	}
	e.svc = restarted
	if _, err := e.connect(regID, token); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "restarted") {
		t.Fatalf("challenge of the earlier run: %v", err)
	}
	id := e.tpmLogin(d, regID)
	if got := e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keys()})); got.Status != "assigned" {
		t.Fatalf("final %s", encode(t, got))
	}
}
