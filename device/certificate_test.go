package device

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
	"github.com/tpmdps/dpsd/issuer"
	"github.com/tpmdps/dpsd/store"
)

// startIssuingServer is startServer with a built-in CA as issuer.
func startIssuingServer(t *testing.T) (*dpsdtest.Server, *issuer.CA) {
	t.Helper()
	ca, err := issuer.NewCA(issuer.KeyECDSAP256, pkix.Name{CommonName: "device test issuing CA"}, time.Now(), 24*time.Hour*365)
	if err != nil {
		t.Fatal(err)
	}
	return dpsdtest.Start(t, dpsdtest.Options{RetryAfter: -1, Issuer: ca}), ca
}

// enrollSymmetric enrolls regID with key; policy "" issues no certificate.
func enrollSymmetric(t *testing.T, srv *dpsdtest.Server, regID string, key []byte, policy string) {
	t.Helper()
	e := storeSymEnrollment(regID, key)
	e.CredentialPolicyName = policy
	if _, err := srv.Store.PutEnrollment(context.Background(), e, ""); err != nil {
		t.Fatal(err)
	}
}

// TestProvisionCertificate: a symmetric-key device with a software key,
// in both wire shapes, gets a certificate for its key; CertificatePEM is
// the leaf without the self-signed root; the Result's JSON describes it.
func TestProvisionCertificate(t *testing.T) {
	srv, ca := startIssuingServer(t)
	for _, apiVersion := range []string{"", CSRAPIVersion2021} {
		regID := "cert-dev-" + strings.ReplaceAll(apiVersion, "-", "")
		if apiVersion == "" {
			regID = "cert-dev-default"
		}
		devKey := []byte("0123456789abcdef0123456789abcdef")
		enrollSymmetric(t, srv, regID, devKey, "default")
		key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		cfg := serverConfig(t, srv, TransportTLS, &SymmetricKey{Key: devKey})
		cfg.RegistrationID = regID
		cfg.APIVersion = apiVersion
		cfg.CertificateKey = key
		res, err := Provision(context.Background(), cfg)
		if err != nil {
			t.Fatalf("%s: %v", apiVersion, err)
		}
		if len(res.CertificateChain) != 2 || !res.CertificateChain[1].Equal(ca.Certificate()) {
			t.Fatalf("%s: chain of %d", apiVersion, len(res.CertificateChain))
		}
		if !key.PublicKey.Equal(res.CertificateChain[0].PublicKey) {
			t.Fatalf("%s: certificate for another key", apiVersion)
		}
		wantShape := res.State.IssuedCertificateChain != nil
		if apiVersion == CSRAPIVersion2021 {
			wantShape = res.State.IssuedClientCertificate != "" && res.State.IssuedCertificateChain == nil
		}
		if !wantShape {
			t.Fatalf("%s: answered in the other shape: %s", apiVersion, res.RegistrationState)
		}
		block, rest := pem.Decode(res.CertificatePEM())
		if block == nil || len(strings.TrimSpace(string(rest))) != 0 {
			t.Fatalf("%s: CertificatePEM is not the one leaf: %q", apiVersion, res.CertificatePEM())
		}
		ic := res.IssuedCertificate
		if ic == nil || ic.Subject != "CN="+regID || ic.ChainLength != 2 || len(ic.URIs) != 1 || !strings.HasSuffix(ic.URIs[0], "/registrations/"+regID) {
			t.Fatalf("%s: described as %+v", apiVersion, ic)
		}
		rec, err := srv.Store.GetRegistration(context.Background(), regID)
		if err != nil || rec.Certificate == nil || rec.Certificate.SHA256Thumbprint != ic.SHA256Thumbprint || rec.Certificate.SerialNumber != ic.SerialNumber {
			t.Fatalf("%s: recorded %+v, %v; device says %+v", apiVersion, rec.Certificate, err, ic)
		}
		b, err := json.Marshal(res)
		if err != nil || !strings.Contains(string(b), `"issuedCertificate":{"subject":"CN=`+regID) {
			t.Fatalf("%s: JSON %s %v", apiVersion, b, err)
		}
	}
}

// TestProvisionCertificateNotIssued: an enrollment that issues nothing
// answers the CSR with the cloud's failure, which Provision reports as
// ErrCertificateNotIssued; the same device without a key is assigned.
func TestProvisionCertificateNotIssued(t *testing.T) {
	srv, _ := startIssuingServer(t)
	devKey := []byte("0123456789abcdef0123456789abcdef")
	enrollSymmetric(t, srv, "no-cert", devKey, "")
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	cfg := serverConfig(t, srv, TransportTCP, &SymmetricKey{Key: devKey})
	cfg.RegistrationID = "no-cert"
	cfg.CertificateKey = key
	res, err := Provision(context.Background(), cfg)
	var e *Error
	if !errors.Is(err, ErrCertificateNotIssued) || !errors.Is(err, ErrNotAssigned) || !errors.As(err, &e) || e.ErrorCode != 400000 || !e.Refused() {
		t.Fatalf("error %v", err)
	}
	if res == nil || res.Status != StatusFailed || res.CertificateChain != nil {
		t.Fatalf("result %+v", res)
	}
	cfg.CertificateKey, cfg.APIVersion = nil, ""
	if res, err := Provision(context.Background(), cfg); err != nil || res.Status != StatusAssigned {
		t.Fatalf("without a CSR: %+v %v", res, err)
	}
}

// TestProvisionCertificateTPM: a TPM device's certificate key is created
// in the TPM; the CSR it signs goes on the authenticated register only, and
// the certificate is for that key; persisted, the key signs from its handle.
func TestProvisionCertificateTPM(t *testing.T) {
	srv, ca := startIssuingServer(t)
	tpm := tpmsim.Open(t)
	att := &TPM{Device: tpm}
	regID := enrollTPM(t, srv, "", endorsementKey(t, att))
	en, err := srv.Store.GetEnrollment(context.Background(), regID)
	if err != nil {
		t.Fatal(err)
	}
	en.CredentialPolicyName = "tpm"
	en.CertificatePolicy = &store.CertificatePolicy{ValidityDays: 3}
	if _, err := srv.Store.PutEnrollment(context.Background(), en, ""); err != nil {
		t.Fatal(err)
	}
	key, err := att.NewCertificateKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	cfg := serverConfig(t, srv, TransportTLS, att)
	cfg.CertificateKey = key
	res, err := Provision(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	leaf := res.CertificateChain[0]
	if !key.Public().(*ecdsa.PublicKey).Equal(leaf.PublicKey) || !res.CertificateChain[1].Equal(ca.Certificate()) {
		t.Fatal("the certificate is not for the TPM's key")
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 3*24*time.Hour+issuerSkew {
		t.Fatalf("validity %v", got)
	}
	if err := key.Persist(devtpm.CertKeyHandle); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = devtpm.EvictPersistent(tpm, devtpm.CertKeyHandle) })
	if n := transientObjects(t, tpm); n != 0 {
		t.Fatalf("%d transient objects left", n)
	}
	again, err := devtpm.OpenSigningKey(tpm, devtpm.CertKeyHandle)
	if err != nil || !again.Public().(*ecdsa.PublicKey).Equal(leaf.PublicKey) {
		t.Fatalf("persisted key: %v", err)
	}
}

// issuerSkew is provision.CertificateClockSkew (issued certificates start
// that much before the registration).
const issuerSkew = 5 * time.Minute
