package main

import (
	"flag"
	"strconv"

	"github.com/tpmdps/dpsd/store"
)

// issuanceFlags are the flags of enrollment add and group add that turn
// certificate issuance on and shape it.
type issuanceFlags struct {
	policy, org, ou string
	days            int
}

// add declares the flags on fs.
func (f *issuanceFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&f.policy, "credential-policy", "", "issue an operational certificate to a device that sends a CSR when it registers; the name is a label (credentialPolicyName), e.g. default")
	fs.IntVar(&f.days, "cert-validity-days", 0, "validity of issued certificates in days, 1-398 (default 30; needs --credential-policy)")
	fs.StringVar(&f.org, "cert-organization", "", "subject O of issued certificates (needs --credential-policy)")
	fs.StringVar(&f.ou, "cert-ou", "", "subject OU of issued certificates (needs --credential-policy)")
}

// apply sets the settings; the service checks them.
func (f *issuanceFlags) apply(es *store.EnrollmentSettings) {
	es.CredentialPolicyName = f.policy
	if p := (store.CertificatePolicy{ValidityDays: f.days, Organization: f.org, OrganizationalUnit: f.ou}); p != (store.CertificatePolicy{}) {
		es.CertificatePolicy = &p
	}
}

// adminIssuanceRows adds the issuance settings of es to a field list.
func adminIssuanceRows(t *adminTable, es *store.EnrollmentSettings) {
	if es.CredentialPolicyName == "" {
		return
	}
	t.row("credentialPolicyName:", es.CredentialPolicyName)
	days := store.DefaultCertificateValidityDays
	if p := es.CertificatePolicy; p != nil {
		if p.ValidityDays != 0 {
			days = p.ValidityDays
		}
		if p.Organization != "" {
			t.row("certificateOrganization:", p.Organization)
		}
		if p.OrganizationalUnit != "" {
			t.row("certificateOU:", p.OrganizationalUnit)
		}
	}
	t.row("certificateValidityDays:", strconv.Itoa(days))
}

// adminCertificateRows adds a registration's issued certificates to a field list.
func adminCertificateRows(t *adminTable, r *store.Registration) {
	if c := r.Certificate; c != nil {
		t.row("certificate:", c.SubjectName)
		t.row("certificateSerial:", c.SerialNumber)
		t.row("certificateSha256:", c.SHA256Thumbprint)
		t.row("certificateIssuer:", c.IssuerName)
		t.row("certificateNotAfter:", adminFmtTime(c.NotAfter))
	}
	for i, s := range r.SupersededCertificates {
		label := ""
		if i == 0 {
			label = "superseded:"
		}
		t.row(label, s.SerialNumber+" (until "+adminFmtTime(s.NotAfter)+", superseded "+adminFmtTime(s.SupersededAt)+")")
	}
}
