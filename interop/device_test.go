package interop

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/store"
)

// startDevice starts a server with MQTT over TLS on 8883 (and, when ws, MQTT
// over WebSocket on 443) and the node environment trusting its CA.
func startDevice(t *testing.T, ws bool) (*dpsdtest.Server, *nodeEnv) {
	t.Helper()
	return startDeviceOpts(t, dpsdtest.Options{}, ws)
}

// startDeviceOpts is startDevice with more options.
func startDeviceOpts(t *testing.T, opts dpsdtest.Options, ws bool) (*dpsdtest.Server, *nodeEnv) {
	t.Helper()
	opts.TLSAddr = mqttsAddr
	needPorts(t, mqttsAddr)
	if ws {
		opts.WSAddr = httpsAddr
		needPorts(t, httpsAddr)
	}
	s := dpsdtest.Start(t, opts)
	return s, prepareNode(t, s.CACertPEM)
}

// randomKey returns a base64 symmetric key of 32 random bytes.
func randomKey(t *testing.T) string {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(k)
}

func putEnrollment(t *testing.T, s *dpsdtest.Server, e *store.Enrollment) {
	t.Helper()
	e.ProvisioningStatus = store.StatusEnabled
	if _, err := s.Store.PutEnrollment(context.Background(), e, ""); err != nil {
		t.Fatalf("enrolling %s: %v", e.RegistrationID, err)
	}
}

func putGroup(t *testing.T, s *dpsdtest.Server, g *store.Group) {
	t.Helper()
	g.ProvisioningStatus = store.StatusEnabled
	if _, err := s.Store.PutGroup(context.Background(), g, ""); err != nil {
		t.Fatalf("enrolling group %s: %v", g.EnrollmentGroupID, err)
	}
}

// wantRecord checks the server's registration record of a device.
func wantRecord(t *testing.T, s *dpsdtest.Server, regID, attestation, group string) {
	t.Helper()
	r, err := s.Store.GetRegistration(context.Background(), regID)
	if err != nil {
		t.Fatalf("registration record of %s: %v", regID, err)
	}
	if r.Status != store.RegistrationAssigned || r.AttestationType != attestation || r.EnrollmentGroupID != group {
		t.Fatalf("registration record of %s: %+v, want assigned by %s (group %q)", regID, r, attestation, group)
	}
}

func symmetricEnrollment(regID, key string) *store.Enrollment {
	return &store.Enrollment{
		RegistrationID: regID,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
				SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: key}},
		},
	}
}

// TestSymmetricKeyIndividual: the Node SDK's SymmetricKeySecurityClient over
// MQTT/TLS on 8883 with an individual enrollment; a wrong key is refused.
func TestSymmetricKeyIndividual(t *testing.T) {
	s, node := startDevice(t, false)
	const regID = "node-sym-individual"
	key := randomKey(t)
	putEnrollment(t, s, symmetricEnrollment(regID, key))

	// The payload comes back in registrationState: its non-ASCII text must
	// survive the SDK's ASCII decoding of the answer (docs/protocol.md section 4).
	const note = "caf\u00e9 \u2713 \U0001F600"
	res := node.register(t, deviceSpec{IDScope: s.IDScope, RegistrationID: regID, SymmetricKey: key,
		Payload: map[string]any{"note": note}})
	wantAssigned(t, res, regID)
	var payload struct{ Note string }
	if err := json.Unmarshal(res.RegistrationState.Payload, &payload); err != nil || payload.Note != note {
		t.Errorf("registrationState.payload = %s (%v), want note %q", res.RegistrationState.Payload, err, note)
	}
	if res.RegistrationState.SymmetricKey != nil && res.RegistrationState.SymmetricKey.EnrollmentGroupID != "" {
		t.Errorf("individual enrollment reported group %q", res.RegistrationState.SymmetricKey.EnrollmentGroupID)
	}
	wantRecord(t, s, regID, store.AttestationSymmetricKey, "")

	wantRefused(t, node.register(t, deviceSpec{IDScope: s.IDScope, RegistrationID: regID, SymmetricKey: randomKey(t)}), regID)
	// An unknown registration id is refused the same way.
	wantRefused(t, node.register(t, deviceSpec{IDScope: s.IDScope, RegistrationID: "node-sym-unknown", SymmetricKey: key}), "node-sym-unknown")

	// A disabled enrollment ends in an error too, not in a hang (the SDK
	// knows no status "disabled": it reports a SyntaxError).
	const disabledID = "node-sym-disabled"
	e := symmetricEnrollment(disabledID, key)
	putEnrollment(t, s, e)
	e.ProvisioningStatus = store.StatusDisabled
	if _, err := s.Store.PutEnrollment(context.Background(), e, ""); err != nil {
		t.Fatal(err)
	}
	res = node.register(t, deviceSpec{IDScope: s.IDScope, RegistrationID: disabledID, SymmetricKey: key})
	wantRefused(t, res, disabledID)
	var body struct{ Status string }
	if err := json.Unmarshal(res.Error.Result, &body); err != nil || body.Status != store.RegistrationDisabled {
		t.Errorf("%s: error body %s (%v), want status %q", disabledID, res.Error.Result, err, store.RegistrationDisabled)
	}
}

// TestSymmetricKeyGroup: a device key derived in Node (HMAC-SHA256 of the
// registration id under the group key, as the Azure docs show) is accepted
// under the group and reported with registrationState.symmetricKey.enrollmentGroupId.
// The server answers with retry-after=0 ("ask again now"), which the SDK
// takes as a zero polling interval.
func TestSymmetricKeyGroup(t *testing.T) {
	s, node := startDeviceOpts(t, dpsdtest.Options{RetryAfter: -1}, false)
	const group, regID = "node-group", "node-group-device-1"
	groupKey := randomKey(t)
	putGroup(t, s, &store.Group{EnrollmentGroupID: group,
		EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
			SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: groupKey, SecondaryKey: randomKey(t)}}}})

	res := node.register(t, deviceSpec{IDScope: s.IDScope, RegistrationID: regID, GroupKey: groupKey})
	wantAssigned(t, res, regID)
	if sk := res.RegistrationState.SymmetricKey; sk == nil || sk.EnrollmentGroupID != group {
		t.Fatalf("registrationState.symmetricKey = %+v, want enrollmentGroupId %q", sk, group)
	}
	wantRecord(t, s, regID, store.AttestationSymmetricKey, group)

	// A key derived from a wrong group key, and the group key itself used as
	// the device key, are both refused.
	wantRefused(t, node.register(t, deviceSpec{IDScope: s.IDScope, RegistrationID: "node-group-device-2", GroupKey: randomKey(t)}), "node-group-device-2")
	wantRefused(t, node.register(t, deviceSpec{IDScope: s.IDScope, RegistrationID: "node-group-device-3", SymmetricKey: groupKey}), "node-group-device-3")
}

// TestWebSocket: MqttWs (wss://localhost:443/$iothub/websocket) with a
// symmetric key; a wrong key is refused.
func TestWebSocket(t *testing.T) {
	s, node := startDevice(t, true)
	const regID = "node-ws-device"
	key := randomKey(t)
	putEnrollment(t, s, symmetricEnrollment(regID, key))

	wantAssigned(t, node.register(t, deviceSpec{Transport: "mqttws", IDScope: s.IDScope, RegistrationID: regID, SymmetricKey: key}), regID)
	wantRecord(t, s, regID, store.AttestationSymmetricKey, "")
	wantRefused(t, node.register(t, deviceSpec{Transport: "mqttws", IDScope: s.IDScope, RegistrationID: regID, SymmetricKey: randomKey(t)}), regID)
}

// certKey is a certificate with its key, and where their PEM files are.
type certKey struct {
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	certPEM  []byte
	certFile string // certificate (and chain) PEM
	keyFile  string // private key PEM, 0600
}

// newCert issues a P-256 certificate for cn, self-signed when parent is nil.
// isCA makes a CA certificate. The PEM files are written to a temp dir; the
// certificate file carries the chain up to (excluding) a self-signed root.
func newCert(t *testing.T, cn string, parent *certKey, isCA bool) *certKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = nil
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ck := &certKey{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	chain := append([]byte(nil), ck.certPEM...)
	if parent != nil {
		chain = append(chain, parent.certPEM...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	name := strings.NewReplacer("/", "_", ":", "_").Replace(cn)
	ck.certFile = filepath.Join(dir, name+".cert.pem")
	ck.keyFile = filepath.Join(dir, name+".key.pem")
	if err := os.WriteFile(ck.certFile, chain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ck.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return ck
}

// x509State is the part of registrationState.x509 the tests check.
type x509State struct {
	CertificateInfo *struct {
		SHA256Thumbprint string `json:"sha256Thumbprint"`
	} `json:"certificateInfo"`
	EnrollmentGroupID string `json:"enrollmentGroupId"`
}

// wantX509State decodes registrationState.x509.
func wantX509State(t *testing.T, res deviceResult) x509State {
	t.Helper()
	var x x509State
	if err := json.Unmarshal(res.RegistrationState.X509, &x); err != nil {
		t.Fatalf("registrationState.x509 = %s: %v", res.RegistrationState.X509, err)
	}
	return x
}

func x509Spec(s *dpsdtest.Server, regID string, ck *certKey) deviceSpec {
	return deviceSpec{IDScope: s.IDScope, RegistrationID: regID, CertFile: ck.certFile, KeyFile: ck.keyFile}
}

// TestX509Individual: the Node SDK's X509Security with a device certificate
// (generated here, CN = registration id) pinned by an individual enrollment;
// an unknown certificate with the same CN is refused.
func TestX509Individual(t *testing.T) {
	s, node := startDevice(t, false)
	const regID = "node-x509-individual"
	dev := newCert(t, regID, nil, false)
	putEnrollment(t, s, &store.Enrollment{
		RegistrationID: regID,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
				ClientCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: string(dev.certPEM)}}}},
		},
	})

	res := node.register(t, x509Spec(s, regID, dev))
	wantAssigned(t, res, regID)
	x := wantX509State(t, res)
	sum := sha256.Sum256(dev.cert.Raw)
	if x.CertificateInfo == nil || !strings.EqualFold(x.CertificateInfo.SHA256Thumbprint, hex.EncodeToString(sum[:])) || x.EnrollmentGroupID != "" {
		t.Errorf("registrationState.x509 = %s, want the device certificate's info and no group", res.RegistrationState.X509)
	}
	wantRecord(t, s, regID, store.AttestationX509, "")
	wantRefused(t, node.register(t, x509Spec(s, regID, newCert(t, regID, nil, false))), regID)
}

// TestX509Group: a device certificate issued by a CA that an enrollment
// group names as its signing certificate; a certificate from another CA is
// refused.
func TestX509Group(t *testing.T) {
	s, node := startDevice(t, false)
	const group, regID = "node-x509-group", "node-x509-group-device"
	ca := newCert(t, "interop device CA", nil, true)
	putGroup(t, s, &store.Group{EnrollmentGroupID: group,
		EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
			SigningCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: string(ca.certPEM)}}}}}})

	res := node.register(t, x509Spec(s, regID, newCert(t, regID, ca, false)))
	wantAssigned(t, res, regID)
	if x := wantX509State(t, res); x.EnrollmentGroupID != group {
		t.Errorf("registrationState.x509 = %s, want enrollmentGroupId %q", res.RegistrationState.X509, group)
	}
	wantRecord(t, s, regID, store.AttestationX509, group)

	other := newCert(t, "another CA", nil, true)
	wantRefused(t, node.register(t, x509Spec(s, "node-x509-stranger", newCert(t, "node-x509-stranger", other, false))), "node-x509-stranger")
}
