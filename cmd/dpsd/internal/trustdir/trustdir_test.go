package trustdir

import (
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/internal/testkit/ekca"
)

func write(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoad(t *testing.T) {
	a, b := ekca.New(t, "vendor A"), ekca.New(t, "vendor B")
	dir := t.TempDir()
	// A vendor bundle with comment headers, a DER root, a DER CRL, an
	// intermediate whose root is elsewhere, and files to skip.
	write(t, dir, "vendor-a.pem", []byte("# Vendor A\n"+string(ekca.PEM(a.Root))+"# intermediate\n"+string(ekca.PEM(a.Intermediate))))
	write(t, dir, "vendor-b-root.CER", b.Root.Raw)
	write(t, dir, "vendor-a.crl", a.CRL(t, big.NewInt(5)))
	write(t, dir, "lonely.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ekca.New(t, "vendor C").Intermediate.Raw}))
	write(t, dir, "README.md", []byte("not a certificate"))
	write(t, dir, "checksums.txt", []byte("abc"))
	write(t, dir, ".hidden.pem", []byte("garbage"))
	if err := os.Mkdir(filepath.Join(dir, "sub.pem"), 0o700); err != nil {
		t.Fatal(err)
	}
	bundle, rep, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Roots != 2 || rep.Intermediates != 2 || rep.CRLs != 1 || len(bundle.Roots) != 2 || len(bundle.CRLs) != 1 {
		t.Fatalf("report %+v", rep)
	}
	if !slices.Equal(rep.Files, []string{"lonely.crt", "vendor-a.crl", "vendor-a.pem", "vendor-b-root.CER"}) {
		t.Fatalf("files %v", rep.Files)
	}
	if !slices.Equal(rep.Skipped, []string{".hidden.pem", "README.md", "checksums.txt", "sub.pem"}) {
		t.Fatalf("skipped %v", rep.Skipped)
	}
	if len(rep.Orphans) != 1 || !strings.Contains(rep.Orphans[0], "vendor C EK intermediate") {
		t.Fatalf("orphans %v", rep.Orphans)
	}
	// The bundle verifies vendor A's EK certificates.
	key := ekca.New(t, "unused").IntermediateKey
	c, err := attest.ParseEKCertificate(a.Issue(t, &key.PublicKey, ekca.EK{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.NewEKTrust(bundle).Verify(c, c.Certificate.NotBefore.Add(1)); err != nil {
		t.Fatal(err)
	}

	// A certificate file that does not parse names itself.
	write(t, dir, "broken.pem", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	if _, _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "broken.pem") || !errors.Is(err, attest.ErrBadTrustFile) {
		t.Fatalf("broken file: %v", err)
	}
	empty := t.TempDir()
	write(t, empty, "README", []byte("x"))
	if _, _, err := Load(empty); !errors.Is(err, ErrEmpty) {
		t.Fatalf("empty: %v", err)
	}
	onlyCRL := t.TempDir()
	write(t, onlyCRL, "a.crl", a.CRL(t))
	if _, _, err := Load(onlyCRL); !errors.Is(err, ErrEmpty) {
		t.Fatalf("CRL only: %v", err)
	}
	if _, _, err := Load(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing directory loaded")
	}
}
