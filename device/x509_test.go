package device

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/store"
)

// x509Chain makes a root, an intermediate and a device certificate for cn
// whose PEM holds the leaf followed by the intermediate.
func x509Chain(t *testing.T, cn string) (root *devca.CA, certPEM, keyPEM []byte) {
	t.Helper()
	now := time.Now()
	root, err := devca.NewRootCA("device test root", now, time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate("device test intermediate", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err = inter.IssueClient(cn, now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return root, append(certPEM, inter.CertPEM()...), keyPEM
}

func TestX509Attestation(t *testing.T) {
	_, certPEM, keyPEM := x509Chain(t, "Dev-X")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "dev.pem"), filepath.Join(dir, "dev.key")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	x, err := LoadX509(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Certificate.Certificate) != 2 {
		t.Fatalf("chain of %d certificates, want leaf and intermediate", len(x.Certificate.Certificate))
	}
	id, err := x.DefaultRegistrationID(context.Background())
	if err != nil || id != "Dev-X" {
		t.Fatalf("DefaultRegistrationID = %q, %v", id, err)
	}
	creds, err := x.Credentials(context.Background(), Session{})
	if err != nil || creds.Password != "" || creds.Certificate == nil || len(creds.Certificate.Certificate) != 2 {
		t.Fatalf("Credentials = %+v, %v", creds, err)
	}
	// Without a parsed Leaf the CN still comes from the first certificate.
	bare := &X509{Certificate: x.Certificate}
	bare.Certificate.Leaf = nil
	if id, err := bare.DefaultRegistrationID(context.Background()); err != nil || id != "Dev-X" {
		t.Fatalf("DefaultRegistrationID without Leaf = %q, %v", id, err)
	}

	// Mistakes are configuration errors.
	otherKey := func() []byte { _, _, k := x509Chain(t, "other"); return k }()
	for name, f := range map[string]func() error{
		"key of another certificate": func() error { _, err := NewX509(certPEM, otherKey); return err },
		"no certificate":             func() error { _, err := NewX509(nil, keyPEM); return err },
		"missing file":               func() error { _, err := LoadX509(filepath.Join(dir, "none.pem"), keyFile); return err },
		"missing key file":           func() error { _, err := LoadX509(certFile, filepath.Join(dir, "none.key")); return err },
	} {
		if err := f(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	if _, err := (&X509{}).Credentials(context.Background(), Session{}); err == nil {
		t.Error("empty X509 gave credentials")
	}
	if _, err := (&X509{}).DefaultRegistrationID(context.Background()); err == nil {
		t.Error("empty X509 gave a registration id")
	}
}

// TestE2EX509Group provisions through an X.509 enrollment group over TLS,
// the chain (leaf + intermediate) coming from one PEM, as dps-device reads it.
func TestE2EX509Group(t *testing.T) {
	srv := startServer(t, false)
	root, certPEM, keyPEM := x509Chain(t, "cam-1")
	if _, err := srv.Store.PutGroup(context.Background(), &store.Group{
		EnrollmentGroupID: "cams",
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
				SigningCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: string(root.CertPEM())}}}},
			ProvisioningStatus: store.StatusEnabled,
		},
	}, ""); err != nil {
		t.Fatal(err)
	}
	x, err := NewX509(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Provision(context.Background(), serverConfig(t, srv, TransportTLS, x))
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != StatusAssigned || res.RegistrationID != "cam-1" || len(res.State.X509) == 0 || res.HubKey != nil {
		t.Fatalf("result %+v", res)
	}
	// Over plain TCP there is no handshake to carry the certificate: the
	// connection is a restricted one and the register is refused.
	_, err = Provision(context.Background(), serverConfig(t, srv, TransportTCP, x))
	var e *Error
	if !errors.As(err, &e) || !e.Refused() {
		t.Fatalf("X.509 over plain TCP: %v", err)
	}
}
