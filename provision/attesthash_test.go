package provision

import (
	"bytes"
	"crypto/rand"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/softtpm"
	"github.com/tpmdps/dpsd/store"
)

// softTPMLogin runs the TPM challenge for a software TPM (softtpm)
// registering as regID and returns the authenticated identity and its keys.
func (e *env) softTPMLogin(d *softtpm.Device, regID string) (Identity, *TPMKeys) {
	e.t.Helper()
	keys := &TPMKeys{EndorsementKey: b64(d.EK.Public()), StorageRootKey: b64(d.SRK.Public())}
	restricted := e.mustConnect(regID, nil)
	resp := e.svc.Register(e.ctx, restricted, RegisterRequest{RegistrationID: regID, TPM: keys}, "tr-ch")
	ch, ok := resp.Body.(*TPMChallenge)
	if resp.Status != 401 || !ok {
		e.t.Fatalf("challenge: status %d body %s", resp.Status, encode(e.t, resp.Body))
	}
	key, err := d.Activate(mustB64(e.t, ch.AuthenticationKey))
	if err != nil {
		e.t.Fatalf("activate challenge: %v", err)
	}
	id := e.mustConnect(regID, e.sas(regID, key, ch.KeyName))
	if id.Method != AuthTPM {
		e.t.Fatalf("identity %+v", id)
	}
	return id, keys
}

// TestTPMReplacedGetsNewHubKey: an enrollment's EK replaced by PUT (a new
// TPM for the same registration id) gives the new TPM a new hub key; the
// retired TPM's key is not handed on. TPM A is the reference simulator,
// TPM B a software TPM.
func TestTPMReplacedGetsNewHubKey(t *testing.T) {
	e := newEnv(t)
	a := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	const regID = "replaced-tpm"
	e.putEnrollment(tpmEnrollment(regID, a.ekPublic()))
	idA := e.tpmLogin(a, regID)
	gotA := e.pollFinal(idA, e.register(idA, RegisterRequest{TPM: a.keys()}))
	recA, err := e.st.GetRegistration(e.ctx, regID)
	if err != nil || gotA.Status != "assigned" || len(recA.HubKey) != HubKeySize {
		t.Fatalf("TPM A: %s, record %+v, %v", encode(t, gotA), recA, err)
	}
	hubKeyMAC(t, a, gotA.RegistrationState.TPM.AuthenticationKey, recA.HubKey) // A holds its key

	b, err := softtpm.NewDevice(rand.Reader, softtpm.RSA2048)
	if err != nil {
		t.Fatal(err)
	}
	e.putEnrollment(tpmEnrollment(regID, b.EK.Public())) // the operator replaces the EK
	idB, keysB := e.softTPMLogin(b, regID)
	gotB := e.pollFinal(idB, e.register(idB, RegisterRequest{TPM: keysB}))
	if gotB.Status != "assigned" || gotB.RegistrationState.TPM == nil {
		t.Fatalf("TPM B: %s", encode(t, gotB))
	}
	hubB, err := b.Activate(mustB64(t, gotB.RegistrationState.TPM.AuthenticationKey))
	if err != nil {
		t.Fatalf("TPM B opens its hub key blob: %v", err)
	}
	recB, err := e.st.GetRegistration(e.ctx, regID)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(hubB, recA.HubKey) {
		t.Fatal("the replacement TPM received the retired TPM's hub key")
	}
	if !bytes.Equal(hubB, recB.HubKey) || !recB.CreatedAt.Equal(recA.CreatedAt) {
		t.Fatalf("record: hub key is B's %v, created %v (was %v)", bytes.Equal(hubB, recB.HubKey), recB.CreatedAt, recA.CreatedAt)
	}
	if bytes.Equal(recA.AttestationHash, recB.AttestationHash) || len(recB.AttestationHash) == 0 {
		t.Fatal("the record's attestation hash did not change with the EK")
	}

	// B registers again: it keeps its key.
	idB2, _ := e.softTPMLogin(b, regID)
	gotB2 := e.pollFinal(idB2, e.register(idB2, RegisterRequest{TPM: keysB}))
	hubB2, err := b.Activate(mustB64(t, gotB2.RegistrationState.TPM.AuthenticationKey))
	if err != nil || !bytes.Equal(hubB2, hubB) {
		t.Fatalf("TPM B's second registration changed its hub key (%v)", err)
	}

	// Back to A (the operator restores the old EK): A gets a key of its own
	// again, neither B's nor its former one.
	e.putEnrollment(tpmEnrollment(regID, a.ekPublic()))
	idA2 := e.tpmLogin(a, regID)
	gotA2 := e.pollFinal(idA2, e.register(idA2, RegisterRequest{TPM: a.keys()}))
	recA2, err := e.st.GetRegistration(e.ctx, regID)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(recA2.HubKey, hubB) || bytes.Equal(recA2.HubKey, recA.HubKey) {
		t.Fatal("TPM A, enrolled again after B, received an earlier key")
	}
	hubKeyMAC(t, a, gotA2.RegistrationState.TPM.AuthenticationKey, recA2.HubKey)
}

// TestHubKeyOfRecordWithoutAttestationHash: a record written before
// attestation hashes were recorded cannot say which TPM its hub key was
// issued for, so the next registration issues a new key (once) and records
// the hash; the registration after that keeps the key.
func TestHubKeyOfRecordWithoutAttestationHash(t *testing.T) {
	e := newEnv(t)
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
	oldKey := bytes.Repeat([]byte{0x42}, HubKeySize)
	old, err := e.st.RecordRegistration(e.ctx, &store.Registration{
		RegistrationID: strings.ToLower(regID), Status: store.RegistrationAssigned, AssignedHub: "hub-1.azure-devices.net",
		DeviceID: strings.ToLower(regID), AttestationType: store.AttestationTPM, HubKey: oldKey,
	}, nil)
	if err != nil || len(old.AttestationHash) != 0 {
		t.Fatalf("old-style record: %+v, %v", old, err)
	}
	e.clock.Advance(1)

	id := e.tpmLogin(d, regID)
	got := e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keys()}))
	rec, err := e.st.GetRegistration(e.ctx, regID)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(rec.HubKey, oldKey) || len(rec.HubKey) != HubKeySize || len(rec.AttestationHash) == 0 || !rec.CreatedAt.Equal(old.CreatedAt) {
		t.Fatalf("upgraded record: new key %v, hash %x, created %v (was %v)", !bytes.Equal(rec.HubKey, oldKey), rec.AttestationHash, rec.CreatedAt, old.CreatedAt)
	}
	hubKeyMAC(t, d, got.RegistrationState.TPM.AuthenticationKey, rec.HubKey)

	id = e.tpmLogin(d, regID)
	e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keys()}))
	rec2, err := e.st.GetRegistration(e.ctx, regID)
	if err != nil || !bytes.Equal(rec2.HubKey, rec.HubKey) || !bytes.Equal(rec2.AttestationHash, rec.AttestationHash) {
		t.Fatalf("second registration after the upgrade changed the key or hash: %v", err)
	}
}

// TestAttestationHashPerMethod: every registration records a hash of what
// it attested with (never the key itself): the same credential gives the
// same hash, another credential another hash.
func TestAttestationHashPerMethod(t *testing.T) {
	e := newEnv(t)
	hashOf := func(regID string) []byte {
		t.Helper()
		rec, err := e.st.GetRegistration(e.ctx, regID)
		if err != nil {
			t.Fatal(err)
		}
		if len(rec.AttestationHash) == 0 {
			t.Fatalf("%s: no attestation hash recorded", regID)
		}
		return rec.AttestationHash
	}
	registerWith := func(regID string, password []byte) []byte {
		t.Helper()
		id := e.mustConnect(regID, password)
		e.pollFinal(id, e.register(id, RegisterRequest{}))
		return hashOf(regID)
	}
	// Symmetric key, individual: primary and secondary key differ.
	e.putEnrollment(symmetricEnrollment("sym-1", symKey(1), symKey(2)))
	h1 := registerWith("sym-1", e.sas("sym-1", symKey(1), ""))
	if h := registerWith("sym-1", e.sas("sym-1", symKey(1), "")); !bytes.Equal(h, h1) {
		t.Fatal("same key, other hash")
	}
	if h := registerWith("sym-1", e.sas("sym-1", symKey(2), "")); bytes.Equal(h, h1) {
		t.Fatal("secondary key, same hash as the primary")
	}
	if bytes.Contains(h1, symKey(1)) || bytes.Contains(h1, symKey(1)[:16]) {
		t.Fatal("the hash contains the key")
	}
	// Symmetric key through a group.
	e.putGroup(&store.Group{EnrollmentGroupID: "g", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
		SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: b64(symKey(9))}}}})
	hg := registerWith("grp-1", e.sas("grp-1", deriveKey(symKey(9), "grp-1"), ""))
	if bytes.Equal(hg, h1) {
		t.Fatal("group device and individual device share a hash")
	}
	// X.509: the pinned certificate, then another one.
	c1, c2 := e.selfSigned("x-1"), e.selfSigned("x-1")
	e.putEnrollment(x509Enrollment("x-1", withCert(c1.pem), withCert(c2.pem)))
	connectX := func(c devCert) []byte {
		t.Helper()
		id, err := e.connectX509("x-1", c.cert)
		if err != nil {
			t.Fatal(err)
		}
		e.pollFinal(id, e.register(id, RegisterRequest{}))
		return hashOf("x-1")
	}
	hx1 := connectX(c1)
	if hx := connectX(c1); !bytes.Equal(hx, hx1) {
		t.Fatal("same certificate, other hash")
	}
	if hx := connectX(c2); bytes.Equal(hx, hx1) {
		t.Fatal("other certificate, same hash")
	}
}

// TestTPMAttestationHashIsTheKey: the hash of a TPM attestation depends on
// the EK's public key, not its encoding (another authPolicy, the same key:
// the same hash), and another EK hashes differently.
func TestTPMAttestationHashIsTheKey(t *testing.T) {
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
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
	hashOf := func(raw []byte) []byte {
		t.Helper()
		ek, err := attest.ParsePublic(raw)
		if err != nil {
			t.Fatal(err)
		}
		h, err := recordAttestationHash(Identity{Method: AuthTPM}, ek)
		if err != nil || len(h) != 32 {
			t.Fatalf("hash: %x, %v", h, err)
		}
		return h
	}
	h := hashOf(d.ekPublic())
	if !bytes.Equal(hashOf(tpm2.Marshal(tpm2.New2B(variant))), h) {
		t.Fatal("the same key in another encoding hashes differently")
	}
	if bytes.Equal(hashOf(otherEK(t)), h) {
		t.Fatal("another EK hashes the same")
	}
}

// BenchmarkAttestationHashTPM: what the attestation hash adds to a TPM
// registration.
func BenchmarkAttestationHashTPM(b *testing.B) {
	d := newTPMDevice(b, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	ek, _, err := parseTPMKeys(d.keys())
	if err != nil {
		b.Fatal(err)
	}
	id := Identity{Method: AuthTPM}
	b.ReportAllocs()
	for b.Loop() {
		if h, err := recordAttestationHash(id, ek); err != nil || len(h) != 32 {
			b.Fatal(err)
		}
	}
}
