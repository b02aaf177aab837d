package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// issuedCertificates: the certificate records of issuance round-trip
// whole: an enrollment's and a group's credentialPolicyName and
// dpsdCertificatePolicy, a registration's current and superseded
// certificates, an operation's issued chain and CSR field. A returned
// record shares no memory with the stored one or with the caller's, and a
// registration recorded without certificates keeps none (the service
// carries them from one record to the next, not the store).
func (s *suite) issuedCertificates(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)

	e := FullEnrollment("Cert-E")
	e.Attestation = store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: "ek"}}
	pe, err := st.PutEnrollment(ctx, e, "")
	if err != nil {
		t.Fatal(err)
	}
	ge, err := st.GetEnrollment(ctx, "cert-e")
	if err != nil {
		t.Fatal(err)
	}
	SameJSON(t, "enrollment", ge, pe)
	if ge.CredentialPolicyName != "policy-1" || ge.CertificatePolicy == nil || *ge.CertificatePolicy != *e.CertificatePolicy {
		t.Fatalf("enrollment issuance settings: %q %+v", ge.CredentialPolicyName, ge.CertificatePolicy)
	}
	ge.CertificatePolicy.ValidityDays = 1
	if again, _ := st.GetEnrollment(ctx, "cert-e"); again.CertificatePolicy.ValidityDays != 90 {
		t.Fatal("the returned enrollment shares its certificate policy with the stored one")
	}
	g := FullGroup("Cert-G")
	if _, err := st.PutGroup(ctx, g, ""); err != nil {
		t.Fatal(err)
	}
	gg, err := st.GetGroup(ctx, "CERT-G")
	if err != nil {
		t.Fatal(err)
	}
	if gg.CredentialPolicyName != g.CredentialPolicyName || gg.CertificatePolicy == nil || *gg.CertificatePolicy != *g.CertificatePolicy {
		t.Fatalf("group issuance settings: %q %+v", gg.CredentialPolicyName, gg.CertificatePolicy)
	}

	r := FullRegistration("Cert-R", "")
	op := FullOperation("op-cert", "Cert-R", clock.Now().Add(time.Minute))
	got, err := st.RecordRegistration(ctx, r, op)
	if err != nil {
		t.Fatal(err)
	}
	if got.Certificate == nil || got.Certificate == r.Certificate || *got.Certificate != *r.Certificate {
		t.Fatalf("returned certificate: %+v (the caller's: %p, returned %p)", got.Certificate, r.Certificate, got.Certificate)
	}
	if len(got.SupersededCertificates) != 1 || &got.SupersededCertificates[0] == &r.SupersededCertificates[0] {
		t.Fatalf("returned superseded certificates %+v share the caller's", got.SupersededCertificates)
	}
	got.Certificate.SerialNumber = "changed"
	got.SupersededCertificates[0].SerialNumber = "changed"
	if r.Certificate.SerialNumber != "0C" || r.SupersededCertificates[0].SerialNumber != "0B" {
		t.Fatal("RecordRegistration's result shares memory with its argument")
	}
	back, err := st.GetRegistration(ctx, "cert-r")
	if err != nil {
		t.Fatal(err)
	}
	want := *r
	want.ETag, want.CreatedAt, want.UpdatedAt = back.ETag, back.CreatedAt, back.UpdatedAt
	SameJSON(t, "registration read back", back, &want)
	gop, err := st.GetOperation(ctx, "op-cert")
	if err != nil {
		t.Fatal(err)
	}
	SameJSON(t, "operation read back", gop, op)
	if len(gop.IssuedCertificateChain) != 3 || gop.CSRField != store.CSRField2025 {
		t.Fatalf("operation chain %d elements, field %q", len(gop.IssuedCertificateChain), gop.CSRField)
	}
	gop.IssuedCertificateChain[0][0] = 0xff
	if again, _ := st.GetOperation(ctx, "op-cert"); again.IssuedCertificateChain[0][0] != 0x30 {
		t.Fatal("the returned operation shares its chain with the stored one")
	}
	// A record without certificates replaces one with them: none are kept.
	clock.Advance(time.Second)
	plain := FullRegistration("cert-r", "")
	plain.Certificate, plain.SupersededCertificates = nil, nil
	if _, err := st.RecordRegistration(ctx, plain, nil); err != nil {
		t.Fatal(err)
	}
	if back, err := st.GetRegistration(ctx, "cert-r"); err != nil || back.Certificate != nil || back.SupersededCertificates != nil {
		t.Fatalf("after a record without certificates: %+v, %v", back, err)
	}
	// An operation written alone (a refusal with no registration) keeps its fields.
	alone := &store.Operation{ID: "op-alone", RegistrationID: "cert-r", Status: store.RegistrationFailed,
		ErrorCode: 400000, ErrorMessage: "m", CSRField: store.CSRField2021, CreatedAt: clock.Now().UTC(), ExpiresAt: clock.Now().Add(time.Hour).UTC()}
	if err := st.PutOperation(ctx, alone); err != nil {
		t.Fatal(err)
	}
	if gop, err := st.GetOperation(ctx, "op-alone"); err != nil {
		t.Fatal(err)
	} else {
		SameJSON(t, "operation alone", gop, alone)
	}
	s.check(t, st)
}
