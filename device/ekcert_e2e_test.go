package device

// TPM enrollment groups end to end: real TPMs holding EK certificates
// signed by a CA made in the test, the device library reading them from
// NV, and the real service admitting or refusing them.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/device/tpmtransport"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/swtpmtest"
	"github.com/tpmdps/dpsd/internal/testkit/ekca"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
	"github.com/tpmdps/dpsd/store"
)

// putTPMGroup creates or replaces TPM group id trusting ca.
func putTPMGroup(t *testing.T, srv *dpsdtest.Server, id string, ca *ekca.CA) {
	t.Helper()
	_, err := srv.Store.PutGroup(context.Background(), &store.Group{
		EnrollmentGroupID: id,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{
				EKCertificateRoots:         []string{string(ekca.PEM(ca.Root))},
				EKCertificateIntermediates: []string{string(ekca.PEM(ca.Intermediate))},
			}},
			IoTHubHostName:     dpsdtest.DefaultHub,
			ProvisioningStatus: store.StatusEnabled,
		},
	}, "")
	if err != nil {
		t.Fatalf("PutGroup: %v", err)
	}
}

// startEKServer is startServer with service-wide TPM roots.
func startEKServer(t *testing.T, roots *ekca.CA) *dpsdtest.Server {
	t.Helper()
	opts := dpsdtest.Options{RetryAfter: -1, HookLimits: hooks.Limits{AuthFailuresPerAddressPerMinute: -1, RestrictedSessionsPerAddress: -1}}
	if roots != nil {
		opts.TPMRoots = &attest.CertBundle{Roots: []*x509.Certificate{roots.Root}, Intermediates: []*x509.Certificate{roots.Intermediate}}
	}
	return dpsdtest.Start(t, opts)
}

// swtpmDev is a swtpm and the go-tpm transport to it. swtpm serves one
// connection at a time: writeNV closes the transport for tpm2-tools and
// opens a new one.
type swtpmDev struct {
	t   *testing.T
	sw  *swtpmtest.TPM
	tpm transport.TPMCloser
}

// openSwtpm opens a transport to sw, closed at cleanup.
func openSwtpm(t *testing.T, sw *swtpmtest.TPM) *swtpmDev {
	t.Helper()
	d := &swtpmDev{t: t, sw: sw}
	d.open()
	t.Cleanup(func() { _ = d.tpm.Close() })
	return d
}

func (d *swtpmDev) open() {
	d.t.Helper()
	tpm, err := tpmtransport.Open(context.Background(), d.sw.Selector())
	if err != nil {
		d.t.Fatal(err)
	}
	d.tpm = tpm
}

// writeNV stores data at index with tpm2-tools and reopens the transport.
func (d *swtpmDev) writeNV(index uint32, data []byte) {
	d.t.Helper()
	if err := d.tpm.Close(); err != nil {
		d.t.Fatal(err)
	}
	d.sw.WriteNV(d.t, index, data)
	d.open()
}

// ekPublicKey is the EK of att as a crypto key.
func ekPublicKey(t *testing.T, att *TPM) crypto.PublicKey {
	t.Helper()
	p, err := attest.ParsePublic(endorsementKey(t, att))
	if err != nil {
		t.Fatal(err)
	}
	return p.PublicKey()
}

// provisionRefused provisions with att and expects the one 401 refusal at the challenge.
func provisionRefused(t *testing.T, srv *dpsdtest.Server, att *TPM, what string) {
	t.Helper()
	_, err := Provision(context.Background(), serverConfig(t, srv, TransportTCP, att))
	var e *Error
	if !errors.As(err, &e) || e.Status != 401 || e.ErrorCode != 401002 || e.Phase != PhaseChallenge {
		t.Fatalf("%s: %v, want the 401 at the challenge", what, err)
	}
}

// TestE2ESwtpmEKCertificateRSA: a swtpm manufactured by swtpm_setup
// --create-ek-cert against the test's CA provisions through a TPM group
// with no individual enrollment, reading its certificate from NV; with the
// group's roots replaced by another CA's it is refused, as it is when its
// NV holds a certificate of another key, an expired one, or another TPM's
// genuine one.
func TestE2ESwtpmEKCertificateRSA(t *testing.T) {
	ca := ekca.New(t, "vendor A")
	keyFile, certFile := ca.LocalCAFiles(t, t.TempDir())
	local := swtpmtest.LocalCA{KeyFile: keyFile, CertFile: certFile}
	dev := openSwtpm(t, swtpmtest.StartDir(t, swtpmtest.ManufactureWithEKCert(t, local)))
	srv := startEKServer(t, nil)
	putTPMGroup(t, srv, "factory-a", ca)

	att := &TPM{Device: dev.tpm}
	cert, err := att.EndorsementKeyCertificate(context.Background())
	if err != nil || len(cert) == 0 {
		t.Fatalf("EK certificate from NV 0x01c00002: %d bytes, %v", len(cert), err)
	}
	res, err := Provision(context.Background(), serverConfig(t, srv, TransportTLS, att))
	if err != nil {
		t.Fatal(err)
	}
	ek, ekKey := endorsementKey(t, att), ekPublicKey(t, att)
	if res.Status != StatusAssigned || res.RegistrationID != attest.RegistrationID(ek) || res.State.TPM == nil ||
		res.State.TPM.EnrollmentGroupID != "factory-a" {
		t.Fatalf("result %+v %s", res, res.RegistrationState)
	}
	checkHubSAS(t, srv, dev.tpm, DefaultHubKeyHandle, res)
	if _, err := srv.Store.GetEnrollment(context.Background(), res.RegistrationID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("an individual enrollment exists: %v", err)
	}

	// The group's roots replaced by another CA: refused.
	other := ekca.New(t, "vendor B")
	putTPMGroup(t, srv, "factory-a", other)
	provisionRefused(t, srv, &TPM{Device: dev.tpm}, "roots replaced")
	putTPMGroup(t, srv, "factory-a", ca)

	// A certificate in NV whose key is not the EK: refused.
	stranger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	dev.writeNV(uint32(devtpm.EKCertIndexRSA2048), ca.Issue(t, &stranger.PublicKey, ekca.EK{}))
	provisionRefused(t, srv, &TPM{Device: dev.tpm}, "certificate of another key")
	// An expired one: refused.
	now := time.Now()
	dev.writeNV(uint32(devtpm.EKCertIndexRSA2048), ca.Issue(t, ekKey, ekca.EK{NotBefore: now.Add(-72 * time.Hour), NotAfter: now.Add(-time.Hour)}))
	provisionRefused(t, srv, &TPM{Device: dev.tpm}, "expired certificate")

	// Another TPM, manufactured by the same CA: its genuine certificate in
	// this TPM's NV is refused (not this EK's); and sent with that TPM's EK
	// by a device holding this TPM, it gets a challenge this TPM cannot open.
	dev2 := openSwtpm(t, swtpmtest.StartDir(t, swtpmtest.ManufactureWithEKCert(t, local)))
	other2 := &TPM{Device: dev2.tpm}
	cert2, err := other2.EndorsementKeyCertificate(context.Background())
	if err != nil || len(cert2) == 0 {
		t.Fatalf("second TPM's certificate: %v", err)
	}
	dev.writeNV(uint32(devtpm.EKCertIndexRSA2048), cert2)
	provisionRefused(t, srv, &TPM{Device: dev.tpm}, "another TPM's certificate")
	replay := &replayedEK{TPM: &TPM{Device: dev.tpm}, ek: endorsementKey(t, other2), cert: cert2}
	cfg := serverConfig(t, srv, TransportTCP, replay)
	cfg.RegistrationID = attest.RegistrationID(replay.ek)
	_, err = Provision(context.Background(), cfg)
	if !errors.Is(err, ErrTPM) {
		t.Fatalf("a challenge for another TPM's EK was finished: %v", err)
	}
	if n := transientObjects(t, dev.tpm); n != 0 {
		t.Fatalf("%d transient objects left", n)
	}
	// The real owner of that certificate provisions.
	if res, err := Provision(context.Background(), serverConfig(t, srv, TransportTCP, other2)); err != nil || res.State.TPM.EnrollmentGroupID != "factory-a" {
		t.Fatalf("second TPM: %v", err)
	}

	// An individual enrollment that requires an EK certificate, on a server
	// whose tpm-roots are the CA: admitted with it, refused without.
	srv2 := startEKServer(t, ca)
	dev.writeNV(uint32(devtpm.EKCertIndexRSA2048), cert)
	regID := enrollTPM(t, srv2, "required-1", ek)
	en, err := srv2.Store.GetEnrollment(context.Background(), regID)
	if err != nil {
		t.Fatal(err)
	}
	en.Attestation.TPM.RequireEKCertificate = true
	if _, err := srv2.Store.PutEnrollment(context.Background(), en, ""); err != nil {
		t.Fatal(err)
	}
	cfg = serverConfig(t, srv2, TransportTCP, &TPM{Device: dev.tpm})
	cfg.RegistrationID = regID
	if _, err := Provision(context.Background(), cfg); err != nil {
		t.Fatalf("required certificate present: %v", err)
	}
	cfg.Attestation = &TPM{Device: dev.tpm, NoEKCertificate: true}
	_, err = Provision(context.Background(), cfg)
	var e *Error
	if !errors.As(err, &e) || e.Status != 401 {
		t.Fatalf("required certificate absent: %v", err)
	}
}

// replayedEK is a device holding one TPM that claims another TPM's EK and
// sends that TPM's genuine EK certificate.
type replayedEK struct {
	*TPM
	ek, cert []byte
}

// RegisterFields sends the other TPM's EK and certificate with this TPM's SRK.
func (r *replayedEK) RegisterFields(ctx context.Context, s Session) (map[string]any, error) {
	f, err := r.TPM.RegisterFields(ctx, s)
	if err != nil {
		return nil, err
	}
	keys := f["tpm"].(map[string]string)
	keys["endorsementKey"] = base64.StdEncoding.EncodeToString(r.ek)
	keys["endorsementKeyCertificate"] = base64.StdEncoding.EncodeToString(r.cert)
	return f, nil
}

// TestE2ESwtpmEKCertificateECC: a P-256 EK on swtpm with a certificate made
// by swtpm_cert and stored at 0x01c0000a with tpm2_nvdefine and
// tpm2_nvwrite provisions through a TPM group.
func TestE2ESwtpmEKCertificateECC(t *testing.T) {
	ca := ekca.New(t, "vendor A")
	keyFile, certFile := ca.LocalCAFiles(t, t.TempDir())
	dev := openSwtpm(t, swtpmtest.Start(t))
	att := &TPM{Device: dev.tpm, KeyAlg: devtpm.ECCP256}
	pub := ekPublicKey(t, att).(*ecdsa.PublicKey)
	point, err := pub.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	der := swtpmtest.ECCEKCert(t, swtpmtest.LocalCA{KeyFile: keyFile, CertFile: certFile}, point[1:33], point[33:], 1002, 365)
	dev.writeNV(uint32(devtpm.EKCertIndexECCP256), der)
	srv := startEKServer(t, nil)
	putTPMGroup(t, srv, "factory-ecc", ca)

	att = &TPM{Device: dev.tpm, KeyAlg: devtpm.ECCP256}
	res, err := Provision(context.Background(), serverConfig(t, srv, TransportTCP, att))
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != StatusAssigned || res.State.TPM == nil || res.State.TPM.EnrollmentGroupID != "factory-ecc" {
		t.Fatalf("result %+v", res)
	}
	checkHubSAS(t, srv, dev.tpm, DefaultHubKeyHandle, res)
	// No certificate sent: refused by the group.
	provisionRefused(t, srv, &TPM{Device: dev.tpm, NoEKCertificate: true}, "no certificate")
}

// TestE2ESimulatorEKCertificate: the reference simulator has no EK
// certificate; one injected into its NV through the platform hierarchy, as
// a manufacturer writes it, admits it to a TPM group.
func TestE2ESimulatorEKCertificate(t *testing.T) {
	tpm := tpmsim.Open(t)
	att := &TPM{Device: tpm}
	ca := ekca.New(t, "vendor A")
	if c, err := att.EndorsementKeyCertificate(context.Background()); err != nil || c != nil {
		t.Fatalf("simulator before injection: %d bytes, %v", len(c), err)
	}
	// With the NV header of the TCG PC Client profile and padding, as some
	// TPMs store it: the device sends the bare DER.
	der := ca.Issue(t, ekPublicKey(t, att), ekca.EK{})
	stored := append([]byte{0x10, 0x01, 0x00, byte(len(der) >> 8), byte(len(der))}, der...)
	stored = append(stored, make([]byte, 1500-len(stored))...) // more than one 1024-byte NV read
	ekca.InjectNV(t, tpm, devtpm.EKCertIndexRSA2048, stored)
	t.Cleanup(func() { ekca.RemoveNV(t, tpm, devtpm.EKCertIndexRSA2048) })
	att = &TPM{Device: tpm}
	got, err := att.EndorsementKeyCertificate(context.Background())
	if err != nil || string(got) != string(der) {
		t.Fatalf("certificate read back: %d bytes, %v", len(got), err)
	}
	srv := startEKServer(t, nil)
	putTPMGroup(t, srv, "factory-sim", ca)
	res, err := Provision(context.Background(), serverConfig(t, srv, TransportTCP, att))
	if err != nil {
		t.Fatal(err)
	}
	if res.State.TPM == nil || res.State.TPM.EnrollmentGroupID != "factory-sim" {
		t.Fatalf("result %+v", res)
	}
	checkHubSAS(t, srv, tpm, DefaultHubKeyHandle, res)
}
