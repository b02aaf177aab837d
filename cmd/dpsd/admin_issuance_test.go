package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// TestAdminIssuance: enrollment add and group add set the issuance
// settings; show prints them; registration show prints the current and
// the superseded certificates; a policy without --credential-policy is
// refused by the service.
func TestAdminIssuance(t *testing.T) {
	e := newAdminEnv(t)
	out := e.must(runEnrollmentCmd, "add", "dev-c", "--credential-policy", "default", "--cert-validity-days", "7", "--cert-organization", "Example Org", "--cert-ou", "Line 3")
	for _, want := range []string{"credentialPolicyName:", "default", "certificateValidityDays:", "7", "certificateOrganization:", "Example Org", "certificateOU:", "Line 3"} {
		if !strings.Contains(out, want) {
			t.Fatalf("enrollment add lacks %q:\n%s", want, out)
		}
	}
	en, err := e.st.GetEnrollment(t.Context(), "dev-c")
	if err != nil || en.CredentialPolicyName != "default" || en.CertificatePolicy == nil ||
		*en.CertificatePolicy != (store.CertificatePolicy{ValidityDays: 7, Organization: "Example Org", OrganizationalUnit: "Line 3"}) {
		t.Fatalf("stored %+v, %v", en, err)
	}
	out = e.must(runGroupCmd, "add", "line-2", "--credential-policy", "line-2")
	if !strings.Contains(out, "credentialPolicyName:") || !strings.Contains(out, "certificateValidityDays:  30") {
		t.Fatalf("group add:\n%s", out)
	}
	if code, _, errs := e.run(runEnrollmentCmd, "add", "dev-d", "--cert-validity-days", "7"); code != 1 || !strings.Contains(errs, "credentialPolicyName") {
		t.Fatalf("a policy without --credential-policy: exit %d, %s", code, errs)
	}

	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	if _, err := e.st.RecordRegistration(t.Context(), &store.Registration{RegistrationID: "dev-c", Status: store.RegistrationAssigned,
		AssignedHub: "hub.example.net", DeviceID: "dev-c",
		Certificate: &store.X509CertificateInfo{SubjectName: "CN=dev-c", SHA256Thumbprint: "AB12", SerialNumber: "7F01",
			IssuerName: "CN=dpsd issuing CA", NotBefore: at, NotAfter: at.Add(7 * 24 * time.Hour), Version: 3},
		SupersededCertificates: []store.SupersededCertificate{{SerialNumber: "7E00", SHA256Thumbprint: "CD34", NotAfter: at.Add(time.Hour), SupersededAt: at}},
	}, nil); err != nil {
		t.Fatal(err)
	}
	out = e.must(runRegistrationCmd, "show", "dev-c")
	for _, want := range []string{"certificate:", "CN=dev-c", "certificateSerial:", "7F01", "certificateSha256:", "AB12", "certificateNotAfter:", "2026-05-08", "superseded:", "7E00"} {
		if !strings.Contains(out, want) {
			t.Fatalf("registration show lacks %q:\n%s", want, out)
		}
	}
	var r store.Registration
	if err := json.Unmarshal([]byte(e.must(runRegistrationCmd, "show", "dev-c", "--json")), &r); err != nil ||
		r.Certificate == nil || r.Certificate.SerialNumber != "7F01" || len(r.SupersededCertificates) != 1 {
		t.Fatalf("registration show --json: %+v %v", r, err)
	}
}
