package storetest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"reflect"
	"testing"

	"github.com/tpmdps/dpsd/store"
)

// tpmEnrollment is a TPM enrollment of id with endorsement key ek (base64).
func tpmEnrollment(id, ek string) *store.Enrollment {
	return &store.Enrollment{RegistrationID: id, EnrollmentSettings: store.EnrollmentSettings{
		Attestation: store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: ek}},
	}}
}

// randomEK is the base64 of random bytes the size of an RSA-2048 EK.
func randomEK(t *testing.T) string {
	t.Helper()
	b := make([]byte, 314)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// enrollmentsByEK: the TPM enrollments of one endorsement key are found
// (the same bytes in another base64 spelling too), and the index follows
// every create, update, type change, bulk write and delete, and ignores
// refused writes and other attestation types.
func (s *suite) enrollmentsByEK(t *testing.T) {
	ctx := context.Background()
	st := s.open(t, nil)
	x, y := randomEK(t), randomEK(t)
	xWrapped := x[:76] + "\n" + x[76:] // the same bytes: base64 decoders skip line breaks
	expect := func(what, ek string, want ...string) {
		t.Helper()
		got, err := st.EnrollmentIDsByEK(ctx, ek)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(got) == 0 && len(want) == 0 {
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: %q, want %q", what, got, want)
		}
	}
	mustPut := func(e *store.Enrollment, ifMatch string) *store.Enrollment {
		t.Helper()
		out, err := st.PutEnrollment(ctx, e, ifMatch)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	expect("empty store", x)
	a := mustPut(tpmEnrollment("Dev-A", x), "")
	mustPut(tpmEnrollment("dev-b", xWrapped), "")
	mustPut(tpmEnrollment("dev-c", y), "")
	other := FullEnrollment("dev-d") // symmetricKey, with a TPM key beside it
	other.Attestation.TPM.EndorsementKey = x
	mustPut(other, "")
	expect("two spellings of x", x, "dev-a", "dev-b")
	expect("x asked in the other spelling", xWrapped, "dev-a", "dev-b")
	expect("y", y, "dev-c")
	expect("an unknown key", randomEK(t))
	expect("no key", "")
	// A refused write changes nothing.
	if _, err := st.PutEnrollment(ctx, tpmEnrollment("dev-a", y), "stale"); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale put: %v", err)
	}
	expect("x after a refused write", x, "dev-a", "dev-b")
	// Updates move the entry; a type change removes it.
	mustPut(tpmEnrollment("DEV-B", y), "")
	expect("x after moving dev-b", x, "dev-a")
	expect("y after moving dev-b", y, "dev-b", "dev-c")
	mustPut(&store.Enrollment{RegistrationID: "dev-a", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{
		Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: "a2V5"}}}}, a.ETag)
	expect("x after dev-a became symmetric", x)
	mustPut(tpmEnrollment("dev-a", x), "*")
	expect("x after dev-a is TPM again", x, "dev-a")
	// Deletes remove the entry; a refused delete does not.
	if err := st.DeleteEnrollment(ctx, "dev-c", "stale"); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale delete: %v", err)
	}
	expect("y after a refused delete", y, "dev-b", "dev-c")
	if err := st.DeleteEnrollment(ctx, "Dev-C", ""); err != nil {
		t.Fatal(err)
	}
	expect("y after deleting dev-c", y, "dev-b")
	// A registration or group of the same id is not an enrollment.
	if _, err := st.RecordRegistration(ctx, &store.Registration{RegistrationID: "dev-e", AttestationType: store.AttestationTPM}, nil); err != nil {
		t.Fatal(err)
	}
	expect("y after a registration", y, "dev-b")
	if b, ok := st.(store.EnrollmentBatcher); ok {
		if _, err := b.PutEnrollments(ctx, []*store.Enrollment{tpmEnrollment("bulk-2", x), tpmEnrollment("bulk-1", x), tpmEnrollment("dev-b", x)}); err != nil {
			t.Fatal(err)
		}
		expect("x after a bulk write", x, "bulk-1", "bulk-2", "dev-a", "dev-b")
		expect("y after a bulk write", y)
	}
	s.check(t, st)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.EnrollmentIDsByEK(ctx, x); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}
