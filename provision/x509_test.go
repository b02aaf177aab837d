package provision

import (
	"crypto/sha1" //nolint:gosec // thumbprint fixtures
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/store"
)

// devCert is a device certificate with its PEM.
type devCert struct {
	cert *x509.Certificate
	pem  string
}

func parsePEMCert(t testing.TB, certPEM []byte) devCert {
	t.Helper()
	c, err := devca.ParseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return devCert{cert: c, pem: string(certPEM)}
}

// selfSigned makes a self-signed device certificate valid around the env's clock.
func (e *env) selfSigned(cn string) devCert {
	e.t.Helper()
	now := e.clock.Now()
	certPEM, _, err := devca.SelfSignedClient(cn, now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil {
		e.t.Fatal(err)
	}
	return parsePEMCert(e.t, certPEM)
}

// issue makes a device certificate signed by ca, valid around the env's clock.
func (e *env) issue(ca *devca.CA, cn string) devCert {
	e.t.Helper()
	now := e.clock.Now()
	certPEM, _, err := ca.IssueClient(cn, now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil {
		e.t.Fatal(err)
	}
	return parsePEMCert(e.t, certPEM)
}

func (e *env) connectX509(regID string, chain ...*x509.Certificate) (Identity, error) {
	return e.svc.Authenticate(e.ctx, Connect{ClientID: regID, Username: username(regID), PeerChain: chain, RemoteAddr: "127.0.0.1:1", TrackingID: "tr-" + regID})
}

func x509Enrollment(regID string, primary, secondary *store.X509CertificateWithInfo) *store.Enrollment {
	return &store.Enrollment{
		RegistrationID: regID,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
				ClientCertificates: &store.X509Certificates{Primary: primary, Secondary: secondary}}},
			ProvisioningStatus: store.StatusEnabled,
		},
	}
}

func x509Group(id string, primary, secondary *store.X509CertificateWithInfo) *store.Group {
	return &store.Group{
		EnrollmentGroupID: id,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
				SigningCertificates: &store.X509Certificates{Primary: primary, Secondary: secondary}}},
			ProvisioningStatus: store.StatusEnabled,
		},
	}
}

func withCert(s string) *store.X509CertificateWithInfo {
	return &store.X509CertificateWithInfo{Certificate: s}
}

func b64DER(c *x509.Certificate) string { return b64(c.Raw) }

func TestX509IndividualEnrollment(t *testing.T) {
	e := newEnv(t)
	other := e.selfSigned("dev-x509")
	dev := e.selfSigned("Dev-X509") // CN case differs from the registration id: still a match
	e.putEnrollment(x509Enrollment("dev-x509", withCert(other.pem), withCert(dev.pem)))

	id, err := e.connectX509("dev-x509", dev.cert)
	if err != nil {
		t.Fatalf("connect with the secondary pinned certificate: %v", err)
	}
	if id.Method != AuthX509 || id.Certificate != dev.cert || id.GroupID != "" || id.SigningCertificate != nil || id.RegistrationID != "dev-x509" {
		t.Fatalf("identity %+v", id)
	}
	opID := e.register(id, RegisterRequest{RegistrationID: "dev-x509"})
	got := e.pollFinal(id, opID)
	st := got.RegistrationState
	if got.Status != "assigned" || st.AssignedHub == "" || st.DeviceID != "dev-x509" || st.X509 == nil || st.SymmetricKey != nil || st.TPM != nil {
		t.Fatalf("final state %s", encode(t, got))
	}
	if st.X509.EnrollmentGroupID != "" || st.X509.SigningCertificateInfo != nil || st.X509.CertificateInfo == nil {
		t.Fatalf("x509 result %s", encode(t, st.X509))
	}
	// The wire shape is the DPS X509RegistrationResult.
	m := jsonMap(t, got)
	info := m["registrationState"].(map[string]any)["x509"].(map[string]any)["certificateInfo"].(map[string]any)
	sha1sum := sha1.Sum(dev.cert.Raw) //nolint:gosec // fixture
	want := map[string]any{
		"subjectName":      "CN=Dev-X509",
		"issuerName":       "CN=Dev-X509",
		"sha1Thumbprint":   strings.ToUpper(hex.EncodeToString(sha1sum[:])),
		"sha256Thumbprint": thumbprint256(dev.cert),
		"serialNumber":     strings.ToUpper(dev.cert.SerialNumber.Text(16)),
		"version":          float64(3),
		"notBeforeUtc":     dev.cert.NotBefore.UTC().Format(time.RFC3339),
		"notAfterUtc":      dev.cert.NotAfter.UTC().Format(time.RFC3339),
	}
	for k, v := range want {
		if info[k] != v {
			t.Errorf("certificateInfo.%s = %v, want %v", k, info[k], v)
		}
	}
	rec, err := e.st.GetRegistration(e.ctx, "dev-x509")
	if err != nil {
		t.Fatal(err)
	}
	if rec.AttestationType != store.AttestationX509 || rec.EnrollmentGroupID != "" || rec.Status != store.RegistrationAssigned {
		t.Fatalf("registration record %+v", rec)
	}
	// The primary certificate authenticates too.
	if _, err := e.connectX509("dev-x509", other.cert); err != nil {
		t.Fatalf("primary: %v", err)
	}
}

// TestX509PinForms: the pinned certificate may be recorded as base64 DER, or
// only by its info's SHA-256 or SHA-1 thumbprint (in any case, with colons).
func TestX509PinForms(t *testing.T) {
	e := newEnv(t)
	a, b, c := e.selfSigned("dev-a"), e.selfSigned("dev-b"), e.selfSigned("dev-c")
	e.putEnrollment(x509Enrollment("dev-a", withCert(b64DER(a.cert)), nil))
	e.putEnrollment(x509Enrollment("dev-b", &store.X509CertificateWithInfo{Info: &store.X509CertificateInfo{
		SHA256Thumbprint: strings.ToLower(thumbprint256(b.cert))}}, nil))
	sum := sha1.Sum(c.cert.Raw) //nolint:gosec // fixture
	colons := strings.ToLower(hex.EncodeToString(sum[:1]))
	for _, x := range sum[1:] {
		colons += ":" + hex.EncodeToString([]byte{x})
	}
	e.putEnrollment(x509Enrollment("dev-c", &store.X509CertificateWithInfo{Info: &store.X509CertificateInfo{SHA1Thumbprint: colons}}, nil))
	for _, d := range []devCert{a, b, c} {
		cn := d.cert.Subject.CommonName
		if _, err := e.connectX509(cn, d.cert); err != nil {
			t.Errorf("%s: %v", cn, err)
		}
	}
	// A SHA-256 thumbprint, when recorded, rules: a matching SHA-1 next to a
	// wrong SHA-256 does not pin.
	d := e.selfSigned("dev-d")
	sumD := sha1.Sum(d.cert.Raw) //nolint:gosec // fixture
	e.putEnrollment(x509Enrollment("dev-d", &store.X509CertificateWithInfo{Info: &store.X509CertificateInfo{
		SHA256Thumbprint: thumbprint256(a.cert), SHA1Thumbprint: hex.EncodeToString(sumD[:])}}, nil))
	if _, err := e.connectX509("dev-d", d.cert); !errors.Is(err, ErrNotAuthorized) {
		t.Errorf("sha256 mismatch with sha1 match: %v", err)
	}
}

func TestX509Group(t *testing.T) {
	e := newEnv(t)
	now := e.clock.Now()
	root, err := devca.NewRootCA("fleet root", now, 24*time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate("fleet intermediate", now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherRoot, err := devca.NewRootCA("other root", now, 24*time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	e.putGroup(x509Group("Other", withCert(string(otherRoot.CertPEM())), nil))
	e.putGroup(x509Group("Fleet", withCert(string(otherRoot.CertPEM())), withCert(string(root.CertPEM()))))
	leaf := e.issue(inter, "sensor-1")

	id, err := e.connectX509("sensor-1", leaf.cert, inter.Cert)
	if err != nil {
		t.Fatalf("connect with leaf and intermediate: %v", err)
	}
	if id.Method != AuthX509 || id.GroupID != "Fleet" || id.SigningCertificate == nil || !id.SigningCertificate.Equal(root.Cert) {
		t.Fatalf("identity %+v", id)
	}
	// Without the intermediate the chain does not reach the root.
	if _, err := e.connectX509("sensor-1", leaf.cert); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("leaf without intermediate: %v", err)
	}
	opID := e.register(id, RegisterRequest{})
	got := e.pollFinal(id, opID)
	st := got.RegistrationState
	if got.Status != "assigned" || st.DeviceID != "sensor-1" || st.X509 == nil || st.SymmetricKey != nil {
		t.Fatalf("final state %s", encode(t, got))
	}
	if st.X509.EnrollmentGroupID != "Fleet" || st.X509.SigningCertificateInfo == nil ||
		st.X509.SigningCertificateInfo.SubjectName != root.Cert.Subject.String() ||
		st.X509.SigningCertificateInfo.SHA256Thumbprint != thumbprint256(root.Cert) ||
		st.X509.CertificateInfo.SHA256Thumbprint != thumbprint256(leaf.cert) ||
		st.X509.CertificateInfo.IssuerName != inter.Cert.Subject.String() {
		t.Fatalf("x509 result %s", encode(t, st.X509))
	}
	rec, err := e.st.GetRegistration(e.ctx, "sensor-1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.EnrollmentGroupID != "Fleet" || rec.AttestationType != store.AttestationX509 {
		t.Fatalf("registration record %+v", rec)
	}
	if n, err := e.st.CountGroupRegistrations(e.ctx, "Fleet"); err != nil || n != 1 {
		t.Fatalf("group registrations: %d, %v", n, err)
	}

	// An intermediate as the group's signing certificate (base64 DER): the leaf alone verifies.
	e.putGroup(x509Group("by-intermediate", withCert(b64DER(inter.Cert)), nil))
	if err := e.st.DeleteGroup(e.ctx, "Fleet", ""); err != nil {
		t.Fatal(err)
	}
	id2, err := e.connectX509("sensor-1", leaf.cert)
	if err != nil || id2.GroupID != "by-intermediate" || !id2.SigningCertificate.Equal(inter.Cert) {
		t.Fatalf("intermediate as signing certificate: %+v, %v", id2, err)
	}
	// The identity that authenticated through Fleet cannot register any more.
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{}, "tr"), ErrorCodeUnauthorized)

	// An individual enrollment takes precedence: it pins another certificate,
	// so the CA-signed leaf is refused although a group would verify it.
	e.putEnrollment(x509Enrollment("sensor-1", withCert(e.selfSigned("sensor-1").pem), nil))
	if _, err := e.connectX509("sensor-1", leaf.cert); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("individual enrollment must rule out the group: %v", err)
	}
	// And the group identity from before is refused at register time.
	errorBody(t, e.svc.Register(e.ctx, id2, RegisterRequest{}, "tr"), ErrorCodeUnauthorized)
}

func TestX509Refusals(t *testing.T) {
	e := newEnv(t)
	now := e.clock.Now()
	root, err := devca.NewRootCA("fleet root", now, 24*time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := devca.NewRootCA("rogue root", now, 24*time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	e.putGroup(x509Group("fleet", withCert(string(root.CertPEM())), nil))
	e.putGroup(&store.Group{EnrollmentGroupID: "refs", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationX509,
		X509: &store.X509Attestation{CAReferences: &store.X509CAReferences{Primary: "my-ca"}}}, ProvisioningStatus: store.StatusEnabled}})
	pinned := e.selfSigned("dev-pinned")
	e.putEnrollment(x509Enrollment("dev-pinned", withCert(pinned.pem), nil))
	e.putEnrollment(symmetricEnrollment("dev-sym", symKey(1), symKey(2)))

	certAt := func(ca *devca.CA, cn string, nb, na time.Time) *x509.Certificate {
		p, _, err := ca.IssueClient(cn, nb, na)
		if err != nil {
			t.Fatal(err)
		}
		return parsePEMCert(t, p).cert
	}
	long := []*x509.Certificate{e.issue(root, "dev-long").cert}
	for len(long) <= MaxPeerChain {
		long = append(long, root.Cert)
	}
	cases := []struct {
		name     string
		regID    string
		chain    []*x509.Certificate
		contains string
	}{
		{"CN differs", "dev-1", []*x509.Certificate{e.issue(root, "dev-2").cert}, "does not match the registration id"},
		{"expired", "dev-old", []*x509.Certificate{certAt(root, "dev-old", now.Add(-2*time.Hour), now.Add(-time.Minute))}, "expired"},
		{"not yet valid", "dev-new", []*x509.Certificate{certAt(root, "dev-new", now.Add(time.Minute), now.Add(time.Hour))}, "not valid before"},
		{"other CA", "dev-rogue", []*x509.Certificate{e.issue(rogue, "dev-rogue").cert}, "no enrollment and no enrollment group"},
		{"self-signed, unknown", "dev-unknown", []*x509.Certificate{e.selfSigned("dev-unknown").cert}, "no enrollment and no enrollment group"},
		{"pinned mismatch", "dev-pinned", []*x509.Certificate{e.selfSigned("dev-pinned").cert}, "not the one the individual enrollment pins"},
		{"CA-signed but pinned", "dev-pinned", []*x509.Certificate{e.issue(root, "dev-pinned").cert}, "not the one the individual enrollment pins"},
		{"symmetric enrollment", "dev-sym", []*x509.Certificate{e.selfSigned("dev-sym").cert}, "individual enrollment is of type"},
		{"chain too long", "dev-long", long, "certificate chain of"},
		// The rogue chain carries the real root as an "intermediate": it must
		// still end at the group's CA through signatures, not by presence.
		{"rogue with root in chain", "dev-rogue2", []*x509.Certificate{e.issue(rogue, "dev-rogue2").cert, root.Cert}, "no enrollment and no enrollment group"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.connectX509(c.regID, c.chain...)
			if !errors.Is(err, ErrNotAuthorized) || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), c.contains) {
				t.Fatalf("got %v, want not authorized containing %q", err, c.contains)
			}
		})
	}
	// The group's CA still works: the refusals above are about the certificates.
	if _, err := e.connectX509("dev-ok", e.issue(root, "dev-ok").cert); err != nil {
		t.Fatalf("valid CA-signed certificate: %v", err)
	}
	// A signing certificate expired at the service's clock verifies nothing.
	e.clock.Advance(25 * time.Hour)
	if _, err := e.connectX509("dev-late", certAt(root, "dev-late", e.clock.Now().Add(-time.Hour), e.clock.Now().Add(time.Hour))); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("leaf under an expired CA: %v", err)
	}
}

func TestX509Disabled(t *testing.T) {
	e := newEnv(t)
	now := e.clock.Now()
	dev := e.selfSigned("dev-off")
	en := x509Enrollment("dev-off", withCert(dev.pem), nil)
	en.ProvisioningStatus = store.StatusDisabled
	e.putEnrollment(en)
	id, err := e.connectX509("dev-off", dev.cert)
	if err != nil {
		t.Fatalf("a disabled enrollment still authenticates: %v", err)
	}
	if got := e.pollFinal(id, e.register(id, RegisterRequest{})); got.Status != "disabled" || got.RegistrationState.AssignedHub != "" {
		t.Fatalf("disabled individual: %s", encode(t, got))
	}

	root, err := devca.NewRootCA("root", now, 24*time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	g := x509Group("off-group", withCert(string(root.CertPEM())), nil)
	g.ProvisioningStatus = store.StatusDisabled
	e.putGroup(g)
	leaf := e.issue(root, "dev-g-off")
	id, err = e.connectX509("dev-g-off", leaf.cert)
	if err != nil {
		t.Fatal(err)
	}
	got := e.pollFinal(id, e.register(id, RegisterRequest{}))
	if got.Status != "disabled" || got.RegistrationState.X509 == nil || got.RegistrationState.X509.EnrollmentGroupID != "off-group" {
		t.Fatalf("disabled group: %s", encode(t, got))
	}
}

// TestX509RegisterTimeRefusals: what authenticated must still hold when the
// device registers; otherwise 401 errorCode 401002.
func TestX509RegisterTimeRefusals(t *testing.T) {
	e := newEnv(t)
	dev := e.selfSigned("dev-r")
	e.putEnrollment(x509Enrollment("dev-r", withCert(dev.pem), nil))
	id, err := e.connectX509("dev-r", dev.cert)
	if err != nil {
		t.Fatal(err)
	}
	// Re-pinned to another certificate.
	e.putEnrollment(x509Enrollment("dev-r", withCert(e.selfSigned("dev-r").pem), nil))
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{}, "tr"), ErrorCodeUnauthorized)
	// Pinned again, then deleted.
	e.putEnrollment(x509Enrollment("dev-r", withCert(dev.pem), nil))
	e.register(id, RegisterRequest{})
	if err := e.st.DeleteEnrollment(e.ctx, "dev-r", ""); err != nil {
		t.Fatal(err)
	}
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{}, "tr"), ErrorCodeUnauthorized)
	// Expired during the connection.
	e.putEnrollment(x509Enrollment("dev-r", withCert(dev.pem), nil))
	e.register(id, RegisterRequest{})
	e.clock.Advance(2 * time.Hour)
	errorBody(t, e.svc.Register(e.ctx, id, RegisterRequest{}, "tr"), ErrorCodeUnauthorized)
	// An X.509 identity without its certificate is never accepted.
	errorBody(t, e.svc.Register(e.ctx, Identity{RegistrationID: "dev-r", Method: AuthX509}, RegisterRequest{}, "tr"), ErrorCodeUnauthorized)
}

// TestX509PasswordIsSAS: a connection with a password is judged by its SAS
// token alone, even when it also presents a certificate.
func TestX509PasswordIsSAS(t *testing.T) {
	e := newEnv(t)
	dev := e.selfSigned("dev-both")
	e.putEnrollment(x509Enrollment("dev-both", withCert(dev.pem), nil))
	_, err := e.svc.Authenticate(e.ctx, Connect{ClientID: "dev-both", Username: username("dev-both"),
		Password: e.sas("dev-both", symKey(1), ""), PeerChain: []*x509.Certificate{dev.cert}})
	if !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "not symmetricKey") {
		t.Fatalf("password with certificate: %v", err)
	}
}

// TestSymmetricKeyName: a symmetric-key SAS carries skn "registration" or
// none (docs/protocol.md section 6); any other skn must be a TPM challenge
// reference and is refused before a key is tried.
func TestSymmetricKeyName(t *testing.T) {
	e := newEnv(t)
	e.putEnrollment(symmetricEnrollment("dev-1", symKey(1), symKey(2)))
	for _, skn := range []string{"", SymmetricKeyName} {
		if _, err := e.connect("dev-1", e.sas("dev-1", symKey(1), skn)); err != nil {
			t.Errorf("skn %q: %v", skn, err)
		}
	}
	for _, skn := range []string{"registrationx", "Registration", "owner", "t1"} {
		_, err := e.connect("dev-1", e.sas("dev-1", symKey(1), skn))
		if !errors.Is(err, ErrNotAuthorized) {
			t.Errorf("skn %q accepted: %v", skn, err)
		}
	}
	// A challenge-reference-looking skn goes to the TPM path and fails there.
	if _, err := e.connect("dev-1", e.sas("dev-1", symKey(1), "t1.short")); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "challenge reference") {
		t.Errorf("malformed challenge reference: %v", err)
	}
}

// TestSymmetricGroupRecorded: a group-derived registration names its group
// in registrationState.symmetricKey and in the registration record.
func TestSymmetricGroupRecorded(t *testing.T) {
	e := newEnv(t)
	groupKey := symKey(9)
	e.putGroup(&store.Group{EnrollmentGroupID: "Fleet-A", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
		SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: b64(symKey(8)), SecondaryKey: b64(groupKey)}},
		ProvisioningStatus: store.StatusEnabled}})
	id := e.mustConnect("Sensor-7", e.sas("Sensor-7", deriveKey(groupKey, "Sensor-7"), SymmetricKeyName))
	if id.GroupID != "Fleet-A" || id.Method != AuthSymmetricKey {
		t.Fatalf("identity %+v", id)
	}
	got := e.pollFinal(id, e.register(id, RegisterRequest{}))
	st := got.RegistrationState
	if got.Status != "assigned" || st.SymmetricKey == nil || st.SymmetricKey.EnrollmentGroupID != "Fleet-A" || st.X509 != nil {
		t.Fatalf("final state %s", encode(t, got))
	}
	rec, err := e.st.GetRegistration(e.ctx, "sensor-7")
	if err != nil {
		t.Fatal(err)
	}
	if rec.EnrollmentGroupID != "Fleet-A" || rec.AttestationType != store.AttestationSymmetricKey {
		t.Fatalf("registration record %+v", rec)
	}
	if n, err := e.st.CountGroupRegistrations(e.ctx, "fleet-a"); err != nil || n != 1 {
		t.Fatalf("group registrations: %d, %v", n, err)
	}
	// An individual registration names no group.
	e.putEnrollment(symmetricEnrollment("dev-ind", symKey(1), symKey(2)))
	id = e.mustConnect("dev-ind", e.sas("dev-ind", symKey(2), ""))
	got = e.pollFinal(id, e.register(id, RegisterRequest{}))
	if got.RegistrationState.SymmetricKey != nil {
		t.Fatalf("individual registration names a group: %s", encode(t, got))
	}
	rec, err = e.st.GetRegistration(e.ctx, "dev-ind")
	if err != nil || rec.EnrollmentGroupID != "" {
		t.Fatalf("individual record %+v, %v", rec, err)
	}
}

// thumbprint256 is an independent oracle of a certificate's SHA-256
// thumbprint as records hold it (upper-case hex of the DER's hash).
func thumbprint256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}
