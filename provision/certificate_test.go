package provision

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/issuer"
	"github.com/tpmdps/dpsd/store"
)

// withCA gives the service a built-in CA and returns it.
func withCA(t testing.TB, ca **issuer.CA) func(*Config) {
	return func(c *Config) {
		var err error
		*ca, err = issuer.NewCA(issuer.KeyECDSAP256, pkix.Name{CommonName: "test issuing CA"}, time.Now(), 3650*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c.Issuer = *ca
	}
}

// csrFor returns a fresh P-256 key and its CSR (DER) with subject CN cn.
func csrFor(t testing.TB, cn string) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

func issuingEnrollment(regID string, key []byte) *store.Enrollment {
	en := symmetricEnrollment(regID, key, symKey(0x77))
	en.CredentialPolicyName = "default"
	return en
}

// chainOf decodes an issuedCertificateChain and checks its wire form:
// base64 DER strings with nothing a JSON parser would unescape (the
// Embedded C SDK uses the raw JSON text), at most three.
func chainOf(t *testing.T, st *RegistrationState) []*x509.Certificate {
	t.Helper()
	if len(st.IssuedCertificateChain) == 0 || len(st.IssuedCertificateChain) > issuer.MaxChainLength {
		t.Fatalf("issuedCertificateChain has %d elements", len(st.IssuedCertificateChain))
	}
	var out []*x509.Certificate
	for i, s := range st.IssuedCertificateChain {
		if strings.ContainsAny(s, "\\\"\n\r -") {
			t.Fatalf("element %d is not bare base64: %q", i, s)
		}
		der, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatalf("element %d: %v", i, err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("element %d: %v", i, err)
		}
		out = append(out, c)
	}
	return out
}

// checkIssued checks an issued chain: leaf first, for key and id, signed
// by ca and valid for client authentication.
func checkIssued(t *testing.T, chain []*x509.Certificate, ca *issuer.CA, key crypto.PublicKey, cn, regID string, at time.Time) {
	t.Helper()
	leaf := chain[0]
	if len(chain) != 2 || !chain[1].Equal(ca.Certificate()) {
		t.Fatalf("chain of %d: want the leaf and the CA", len(chain))
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("leaf does not verify for client auth: %v", err)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key) {
		t.Fatal("leaf certifies another key")
	}
	if leaf.Subject.CommonName != cn {
		t.Fatalf("CN %q, want %q", leaf.Subject.CommonName, cn)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "dpsd://"+strings.ToLower(testScope)+"/registrations/"+regID {
		t.Fatalf("URI SANs %v", leaf.URIs)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Fatalf("other SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
}

// countingObserver records the registration events.
type countingObserver struct {
	mu  sync.Mutex
	evs []RegistrationEvent
}

func (o *countingObserver) Registered(_ context.Context, ev RegistrationEvent) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.evs = append(o.evs, ev)
}
func (o *countingObserver) ChallengeIssued(context.Context, string)      {}
func (o *countingObserver) AuthFailed(context.Context, string)           {}
func (o *countingObserver) EKCertificateChecked(context.Context, string) {}

func TestIssueCertificate2025(t *testing.T) {
	var ca *issuer.CA
	obs := &countingObserver{}
	e := newEnv(t, withCA(t, &ca), func(c *Config) { c.Observer = obs })
	en := issuingEnrollment("dev-1", symKey(1))
	en.CertificatePolicy = &store.CertificatePolicy{ValidityDays: 7, Organization: "Example Org", OrganizationalUnit: "Line 3"}
	e.putEnrollment(en)
	id := e.mustConnect("Dev-1", e.sas("Dev-1", symKey(1), ""))
	key, der := csrFor(t, "Dev-1")
	opID := e.register(id, RegisterRequest{CSR: base64.StdEncoding.EncodeToString(der)})
	got := e.pollFinal(id, opID)
	st := got.RegistrationState
	if got.Status != "assigned" || st.IssuedClientCertificate != "" {
		t.Fatalf("final %s", encode(t, got))
	}
	chain := chainOf(t, st)
	checkIssued(t, chain, ca, &key.PublicKey, "Dev-1", "dev-1", e.clock.Now())
	leaf := chain[0]
	if want := e.clock.Now().Add(7 * 24 * time.Hour); !leaf.NotAfter.Equal(want) {
		t.Fatalf("notAfter %v, want %v (7 days)", leaf.NotAfter, want)
	}
	if want := e.clock.Now().Add(-CertificateClockSkew); !leaf.NotBefore.Equal(want) {
		t.Fatalf("notBefore %v, want %v", leaf.NotBefore, want)
	}
	if o, ou := leaf.Subject.Organization, leaf.Subject.OrganizationalUnit; len(o) != 1 || o[0] != "Example Org" || len(ou) != 1 || ou[0] != "Line 3" {
		t.Fatalf("subject %s", leaf.Subject)
	}
	rec, err := e.st.GetRegistration(e.ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Certificate == nil || !rec.Certificate.MatchesCertificate(leaf) || rec.Certificate.SerialNumber != strings.ToUpper(leaf.SerialNumber.Text(16)) {
		t.Fatalf("recorded certificate %+v", rec.Certificate)
	}
	if rec.SupersededCertificates != nil {
		t.Fatalf("superseded on first issuance: %+v", rec.SupersededCertificates)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.evs) != 1 || obs.evs[0].CertificateSerial != rec.Certificate.SerialNumber || obs.evs[0].CertificateThumbprint != rec.Certificate.SHA256Thumbprint {
		t.Fatalf("events %+v", obs.evs)
	}
}

func TestIssueCertificate2021PEM(t *testing.T) {
	var ca *issuer.CA
	e := newEnv(t, withCA(t, &ca))
	e.putEnrollment(issuingEnrollment("edge-1", symKey(1)))
	id := e.mustConnect("edge-1", e.sas("edge-1", symKey(1), ""))
	key, der := csrFor(t, "edge-1")
	// The 2021 samples send PEM with line breaks (JSON-escaped on the wire).
	csrPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	got := e.pollFinal(id, e.register(id, RegisterRequest{ClientCertificateCSR: csrPEM}))
	st := got.RegistrationState
	if st.IssuedCertificateChain != nil || st.IssuedClientCertificate == "" {
		t.Fatalf("final %s", encode(t, got))
	}
	var chain []*x509.Certificate
	for rest := []byte(st.IssuedClientCertificate); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			if len(strings.TrimSpace(string(rest))) != 0 {
				t.Fatalf("text after the PEM: %q", rest)
			}
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil || b.Type != "CERTIFICATE" {
			t.Fatalf("PEM block %q: %v", b.Type, err)
		}
		chain = append(chain, c)
	}
	checkIssued(t, chain, ca, &key.PublicKey, "edge-1", "edge-1", e.clock.Now())
	if leaf := chain[0]; !leaf.NotAfter.Equal(e.clock.Now().Add(store.DefaultCertificateValidityDays * 24 * time.Hour)) {
		t.Fatalf("default validity: notAfter %v", leaf.NotAfter)
	}
}

// TestIssueCertificateRenewal: each register with a CSR issues a new
// certificate and lists the one it replaces; a register without a CSR keeps
// the current one; the list keeps the newest MaxSupersededCertificates.
func TestIssueCertificateRenewal(t *testing.T) {
	var ca *issuer.CA
	e := newEnv(t, withCA(t, &ca), func(c *Config) { c.RetryAfter = -1 })
	e.putEnrollment(issuingEnrollment("dev-r", symKey(1)))
	id := e.mustConnect("dev-r", e.sas("dev-r", symKey(1), ""))
	var serials []string
	_, der := csrFor(t, "dev-r")
	for i := range store.MaxSupersededCertificates + 3 {
		if i%2 == 1 { // a new key every other time; the same CSR again is fine too
			_, der = csrFor(t, "dev-r")
		}
		e.clock.Advance(time.Minute)
		e.pollFinal(id, e.register(id, RegisterRequest{CSR: base64.StdEncoding.EncodeToString(der)}))
		rec, err := e.st.GetRegistration(e.ctx, "dev-r")
		if err != nil {
			t.Fatal(err)
		}
		serials = append(serials, rec.Certificate.SerialNumber)
		if i == 0 {
			continue
		}
		sup := rec.SupersededCertificates
		if want := min(i, store.MaxSupersededCertificates); len(sup) != want {
			t.Fatalf("renewal %d: %d superseded, want %d", i, len(sup), want)
		}
		if sup[0].SerialNumber != serials[i-1] || !sup[0].SupersededAt.Equal(e.clock.Now()) || sup[0].SHA256Thumbprint == "" {
			t.Fatalf("renewal %d: newest superseded %+v, want serial %s", i, sup[0], serials[i-1])
		}
		if serials[i] == serials[i-1] {
			t.Fatal("a renewal kept the serial number")
		}
	}
	// Without a CSR: nothing issued, the current certificate stays.
	before, _ := e.st.GetRegistration(e.ctx, "dev-r")
	got := e.pollFinal(id, e.register(id, RegisterRequest{}))
	if got.RegistrationState.IssuedCertificateChain != nil {
		t.Fatal("a register without a CSR got a chain")
	}
	after, _ := e.st.GetRegistration(e.ctx, "dev-r")
	if after.Certificate.SerialNumber != before.Certificate.SerialNumber || len(after.SupersededCertificates) != len(before.SupersededCertificates) {
		t.Fatalf("a register without a CSR changed the certificates: %+v", after)
	}
}

// TestCSRNotConfigured: a CSR to a service without an issuer, or for an
// enrollment without credentialPolicyName, gets the failed operation IoT
// Edge falls back on, in either field, and leaves the registration as it
// was; the same register without the CSR is then assigned.
func TestCSRNotConfigured(t *testing.T) {
	var ca *issuer.CA
	for name, mods := range map[string][]func(*Config){
		"no issuer":            nil,
		"no credential policy": {withCA(t, &ca)},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, mods...)
			e.putEnrollment(symmetricEnrollment("edge-2", symKey(1), symKey(2)))
			id := e.mustConnect("edge-2", e.sas("edge-2", symKey(1), ""))
			first := e.pollFinal(id, e.register(id, RegisterRequest{}))
			recBefore, _ := e.st.GetRegistration(e.ctx, "edge-2")
			for _, req := range []RegisterRequest{
				{ClientCertificateCSR: base64.StdEncoding.EncodeToString(mustCSR(t, "edge-2"))},
				{CSR: base64.StdEncoding.EncodeToString(mustCSR(t, "edge-2"))},
			} {
				got := e.pollFinal(id, e.register(id, req))
				st := got.RegistrationState
				if got.Status != "failed" || st.ErrorCode != 400000 || st.ErrorMessage != "Device sent CSR but it is not configured in the service." ||
					st.AssignedHub != "" || st.IssuedCertificateChain != nil || st.IssuedClientCertificate != "" {
					t.Fatalf("fallback answer %s", encode(t, got))
				}
				// The exact JSON IoT Edge's serde model reads.
				m := jsonMap(t, got)
				rs := m["registrationState"].(map[string]any)
				if m["status"] != "failed" || rs["errorCode"] != float64(400000) || rs["registrationId"] != "edge-2" {
					t.Fatalf("wire form %v", m)
				}
			}
			recAfter, _ := e.st.GetRegistration(e.ctx, "edge-2")
			if recAfter.ETag != recBefore.ETag {
				t.Fatal("the fallback rewrote the registration record")
			}
			again := e.pollFinal(id, e.register(id, RegisterRequest{}))
			if again.Status != "assigned" || again.RegistrationState.AssignedHub != first.RegistrationState.AssignedHub {
				t.Fatalf("register without the CSR: %s", encode(t, again))
			}
		})
	}
}

func mustCSR(t testing.TB, cn string) []byte {
	_, der := csrFor(t, cn)
	return der
}

func TestCSRRefusals(t *testing.T) {
	var ca *issuer.CA
	e := newEnv(t, withCA(t, &ca))
	e.putEnrollment(issuingEnrollment("dev-x", symKey(1)))
	id := e.mustConnect("dev-x", e.sas("dev-x", symKey(1), ""))
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p521CSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-x"}}, p521)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	twoCNs, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{
		ExtraNames: []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "dev-x"}, {Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "dev-y"}}}}, key)
	if err != nil {
		t.Fatal(err)
	}
	noCN, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{Organization: []string{"o"}}}, key)
	if err != nil {
		t.Fatal(err)
	}
	good := base64.StdEncoding.EncodeToString(mustCSR(t, "dev-x"))
	for name, tc := range map[string]struct {
		req  RegisterRequest
		says string
	}{
		"CN of another device": {RegisterRequest{CSR: base64.StdEncoding.EncodeToString(mustCSR(t, "dev-y"))}, `common name "dev-y" is not the registration id`},
		"both fields":          {RegisterRequest{CSR: good, ClientCertificateCSR: good}, "not both"},
		"not base64":           {RegisterRequest{CSR: "not a csr"}, "csr: malformed"},
		"P-521 key":            {RegisterRequest{ClientCertificateCSR: base64.StdEncoding.EncodeToString(p521CSR)}, "clientCertificateCsr: certificate signing request key not accepted: ECDSA key on P-521"},
		"two common names":     {RegisterRequest{CSR: base64.StdEncoding.EncodeToString(twoCNs)}, "2 common names"},
		"no common name":       {RegisterRequest{CSR: base64.StdEncoding.EncodeToString(noCN)}, "0 common names"},
	} {
		resp := e.svc.Register(e.ctx, id, tc.req, "tr")
		eb := errorBody(t, resp, ErrorCodeBadRequest)
		if !strings.Contains(eb.Message, tc.says) {
			t.Errorf("%s: message %q, want it to say %q", name, eb.Message, tc.says)
		}
	}
	if _, err := e.st.GetRegistration(e.ctx, "dev-x"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused register recorded a registration: %v", err)
	}
}

// TestDisabledIgnoresCSR: a disabled enrollment answers disabled, CSR or
// not, and issues nothing.
func TestDisabledIgnoresCSR(t *testing.T) {
	var ca *issuer.CA
	e := newEnv(t, withCA(t, &ca))
	en := issuingEnrollment("dev-d", symKey(1))
	en.ProvisioningStatus = store.StatusDisabled
	e.putEnrollment(en)
	id := e.mustConnect("dev-d", e.sas("dev-d", symKey(1), ""))
	got := e.pollFinal(id, e.register(id, RegisterRequest{CSR: base64.StdEncoding.EncodeToString(mustCSR(t, "dev-d"))}))
	if got.Status != "disabled" || got.RegistrationState.IssuedCertificateChain != nil {
		t.Fatalf("final %s", encode(t, got))
	}
	if rec, _ := e.st.GetRegistration(e.ctx, "dev-d"); rec.Certificate != nil {
		t.Fatal("a disabled enrollment's device got a certificate")
	}
}

// TestIssueCertificateTPM: a TPM device's CSR is ignored (not even parsed)
// on the restricted challenge register and honoured on the authenticated
// one; the hub key blob and the chain come in the same answer.
func TestIssueCertificateTPM(t *testing.T) {
	var ca *issuer.CA
	e := newEnv(t, withCA(t, &ca))
	d := newTPMDevice(t, devtpm.ECCP256, devtpm.SRKECCP256)
	regID := d.registrationID()
	en := tpmEnrollment(regID, d.ekPublic())
	en.CredentialPolicyName = "tpm-devices"
	e.putEnrollment(en)
	restricted := e.mustConnect(regID, nil)
	resp := e.svc.Register(e.ctx, restricted, RegisterRequest{TPM: d.keys(), CSR: "garbage that would be a 400"}, "tr")
	if _, ok := resp.Body.(*TPMChallenge); resp.Status != 401 || !ok {
		t.Fatalf("restricted register with a bad CSR: %d %s", resp.Status, encode(t, resp.Body))
	}
	id := e.tpmLogin(d, regID)
	key, der := csrFor(t, regID)
	got := e.pollFinal(id, e.register(id, RegisterRequest{TPM: d.keys(), CSR: base64.StdEncoding.EncodeToString(der)}))
	if got.Status != "assigned" || got.RegistrationState.TPM == nil {
		t.Fatalf("final %s", encode(t, got))
	}
	checkIssued(t, chainOf(t, got.RegistrationState), ca, &key.PublicKey, regID, regID, e.clock.Now())
}

// TestIssueCertificateX509Group: a device of an X.509 group with a
// credential policy gets a certificate for a new key (its onboarding
// certificate stays what it was).
func TestIssueCertificateX509Group(t *testing.T) {
	var ca *issuer.CA
	e := newEnv(t, withCA(t, &ca))
	root, err := devca.NewRootCA("fleet root", e.clock.Now(), 24*time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	g := x509Group("fleet", withCert(string(root.CertPEM())), nil)
	g.CredentialPolicyName = "fleet-policy"
	g.CertificatePolicy = &store.CertificatePolicy{ValidityDays: 398}
	e.putGroup(g)
	onboarding := e.issue(root, "x-dev-7")
	id, err := e.connectX509("x-dev-7", onboarding.cert)
	if err != nil {
		t.Fatal(err)
	}
	key, der := csrFor(t, "x-dev-7")
	got := e.pollFinal(id, e.register(id, RegisterRequest{CSR: base64.StdEncoding.EncodeToString(der)}))
	chain := chainOf(t, got.RegistrationState)
	checkIssued(t, chain, ca, &key.PublicKey, "x-dev-7", "x-dev-7", e.clock.Now())
	if !chain[0].NotAfter.Equal(e.clock.Now().Add(398 * 24 * time.Hour)) {
		t.Fatalf("notAfter %v", chain[0].NotAfter)
	}
	if chain[0].Equal(onboarding.cert) {
		t.Fatal("the onboarding certificate came back")
	}
}

// TestIssuerFailure: an issuer that cannot sign (its CA has expired) is an
// internal error the device may retry; nothing is recorded.
func TestIssuerFailure(t *testing.T) {
	expired, err := issuer.NewCA(issuer.KeyECDSAP256, pkix.Name{CommonName: "expired"}, time.Now().Add(-48*time.Hour), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) { c.Issuer = expired })
	e.putEnrollment(issuingEnrollment("dev-f", symKey(1)))
	id := e.mustConnect("dev-f", e.sas("dev-f", symKey(1), ""))
	resp := e.svc.Register(e.ctx, id, RegisterRequest{CSR: base64.StdEncoding.EncodeToString(mustCSR(t, "dev-f"))}, "tr")
	errorBody(t, resp, ErrorCodeInternal)
	if resp.RetryAfter <= 0 {
		t.Fatalf("retry-after %v", resp.RetryAfter)
	}
	if _, err := e.st.GetRegistration(e.ctx, "dev-f"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("recorded after an issuer failure: %v", err)
	}
}

// lyingIssuer wraps a CA and answers with what its test asks for instead.
type lyingIssuer struct {
	ca     *issuer.CA
	mangle func(req issuer.Request, chain []*x509.Certificate) []*x509.Certificate
}

func (l *lyingIssuer) Issue(ctx context.Context, req issuer.Request) ([]*x509.Certificate, error) {
	chain, err := l.ca.Issue(ctx, req)
	if err != nil {
		return nil, err
	}
	return l.mangle(req, chain), nil
}

// TestIssuerAnswerChecked: the service hands on nothing an issuer returns
// that is not a certificate for the request (an external CA is a network
// peer): another key, another name, more than three certificates, none.
func TestIssuerAnswerChecked(t *testing.T) {
	ca, err := issuer.NewCA(issuer.KeyECDSAP256, pkix.Name{CommonName: "ca"}, time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for name, mangle := range map[string]func(issuer.Request, []*x509.Certificate) []*x509.Certificate{
		"another key": func(req issuer.Request, _ []*x509.Certificate) []*x509.Certificate {
			other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			req.PublicKey = &other.PublicKey
			c, _ := ca.Issue(context.Background(), req)
			return c
		},
		"another name": func(req issuer.Request, _ []*x509.Certificate) []*x509.Certificate {
			req.Subject.CommonName = "someone-else"
			c, _ := ca.Issue(context.Background(), req)
			return c
		},
		"four certificates": func(_ issuer.Request, c []*x509.Certificate) []*x509.Certificate { return append(c, c[1], c[1]) },
		"no certificate":    func(issuer.Request, []*x509.Certificate) []*x509.Certificate { return nil },
	} {
		e := newEnv(t, func(c *Config) { c.Issuer = &lyingIssuer{ca: ca, mangle: mangle} })
		e.putEnrollment(issuingEnrollment("dev-l", symKey(1)))
		id := e.mustConnect("dev-l", e.sas("dev-l", symKey(1), ""))
		resp := e.svc.Register(e.ctx, id, RegisterRequest{CSR: base64.StdEncoding.EncodeToString(mustCSR(t, "dev-l"))}, "tr")
		if resp.Status != 500 {
			t.Errorf("%s: status %d %s", name, resp.Status, encode(t, resp.Body))
		}
	}
}

func TestDeviceURI(t *testing.T) {
	if got := DeviceURI("0ne00ABC", "Dev:1.a_b-c").String(); got != "dpsd://0ne00abc/registrations/dev:1.a_b-c" {
		t.Fatalf("DeviceURI = %s", got)
	}
}

// TestParseRegisterRequestCSRFields: the two fields as the clients send
// them, a null CSR, and a CSR that is not a string.
func TestParseRegisterRequestCSRFields(t *testing.T) {
	for body, want := range map[string]RegisterRequest{
		`{"registrationId":"my-edge-device","clientCertificateCsr":"MIHT","payload":{"a":1}}`: {RegistrationID: "my-edge-device", ClientCertificateCSR: "MIHT", Payload: []byte(`{"a":1}`)},
		`{"registrationId":"d","csr":"MIIB"}`:                                                 {RegistrationID: "d", CSR: "MIIB"},
		`{"payload":null,"csr":"MIIB"}`:                                                       {CSR: "MIIB"},
		`{"csr":null}`:                                                                        {},
	} {
		got, err := ParseRegisterRequest([]byte(body))
		if err != nil || got.RegistrationID != want.RegistrationID || got.CSR != want.CSR || got.ClientCertificateCSR != want.ClientCertificateCSR || string(got.Payload) != string(want.Payload) {
			t.Errorf("%s: %+v %v", body, got, err)
		}
	}
	if _, err := ParseRegisterRequest([]byte(`{"csr":42}`)); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("a CSR that is no string: %v", err)
	}
}

// TestCSRCommonNameASCIIOnly: the common name equals the registration id
// ignoring ASCII case only: a letter that Unicode folds onto an ASCII one
// (the Kelvin sign onto k) is another name.
func TestCSRCommonNameASCIIOnly(t *testing.T) {
	if !strings.EqualFold("dev-\u212a", "dev-k") {
		t.Fatal("the premise: strings.EqualFold folds the Kelvin sign onto k")
	}
	for cn, ok := range map[string]bool{"dev-k": true, "DEV-K": true, "Dev-K": true, "dev-\u212a": false, "dev-k ": false, "dev-": false} {
		_, err := parseDeviceCSR(RegisterRequest{CSR: base64.StdEncoding.EncodeToString(mustCSR(t, cn))}, "dev-k")
		if (err == nil) != ok {
			t.Errorf("CN %q for dev-k: %v", cn, err)
		}
	}
}
