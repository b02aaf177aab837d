package apiclient

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/tpmdps/dpsd/store"
)

// TestWarnings: Options.Warnings receives the service's warning about an
// endorsement key enrolled under a second registration id, from a PUT and
// from a bulk create, and nothing for writes without one.
func TestWarnings(t *testing.T) {
	srv, _, owner, _ := server(t)
	var mu sync.Mutex
	var got []string
	c, err := New(owner, Options{BaseURL: srv.URL, HTTPClient: srv.Client(), Warnings: func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, msg)
	}})
	if err != nil {
		t.Fatal(err)
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub := tpm2.RSAEKTemplate
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()})
	ek := base64.StdEncoding.EncodeToString(tpm2.Marshal(tpm2.New2B(pub)))
	tpmEnrollment := func(id string) *store.Enrollment {
		return &store.Enrollment{RegistrationID: id, EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: ek}}}}
	}
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		w := got
		got = nil
		return w
	}
	if _, err := c.PutEnrollment(t.Context(), tpmEnrollment("dev-a"), ""); err != nil {
		t.Fatal(err)
	}
	if w := take(); len(w) != 0 {
		t.Fatalf("first enrollment: warnings %q", w)
	}
	if _, err := c.PutEnrollment(t.Context(), tpmEnrollment("dev-b"), ""); err != nil {
		t.Fatal(err)
	}
	if w := take(); len(w) != 1 || !strings.Contains(w[0], "dev-b (also dev-a)") {
		t.Fatalf("second id of the key: warnings %q", w)
	}
	res, err := c.BulkEnrollments(t.Context(), BulkCreate, []*store.Enrollment{tpmEnrollment("dev-c")})
	if err != nil || !res.IsSuccessful {
		t.Fatalf("bulk: %+v %v", res, err)
	}
	if w := take(); len(w) != 1 || !strings.Contains(w[0], "dev-c (also dev-a, dev-b)") {
		t.Fatalf("bulk create: warnings %q", w)
	}
	if _, err := c.GetEnrollment(t.Context(), "dev-c"); err != nil {
		t.Fatal(err)
	}
	if w := take(); len(w) != 0 {
		t.Fatalf("a read: warnings %q", w)
	}
}
