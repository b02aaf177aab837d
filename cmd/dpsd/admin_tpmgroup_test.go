package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/internal/testkit/ekca"
)

// TestAdminTPMGroup: dpsd group add --tpm-roots DIR makes a TPM group from
// a directory of roots, intermediates and CRLs, with the manufacturer,
// model and EK hash filters; show prints them; mistakes are refused before
// anything is sent.
func TestAdminTPMGroup(t *testing.T) {
	e := newAdminEnv(t)
	ca := ekca.New(t, "vendor A")
	dir := ca.WriteDir(t)
	if err := os.WriteFile(filepath.Join(dir, "vendor-a.crl"), ca.CRL(t, big.NewInt(9)), 0o600); err != nil {
		t.Fatal(err)
	}
	hashes := filepath.Join(t.TempDir(), "eks.txt")
	h1, h2 := strings.Repeat("ab", 32), strings.Repeat("CD", 32)
	if err := os.WriteFile(hashes, []byte("# factory batch 7\n"+h1+"\n\n"+h2+"  # line 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := e.must(runGroupCmd, "add", "factory-a", "--tpm-roots", dir, "--tpm-manufacturer", "id:494E5443",
		"--tpm-model", "SLB9670", "--ek-hashes", hashes, "--iothub", "hub.example.net")
	for _, want := range []string{"attestation:", "tpm", "ekCertificateRoot:", "vendor A root", "ekCertificateIntermediates:", "ekCertificateCrls:",
		"tpmManufacturer:", "id:494E5443", "tpmModel:", "SLB9670", "endorsementKeyHashes:"} {
		if !strings.Contains(out, want) {
			t.Fatalf("add output lacks %q:\n%s", want, out)
		}
	}
	g, err := e.st.GetGroup(context.Background(), "factory-a")
	if err != nil {
		t.Fatal(err)
	}
	a := g.Attestation.TPM
	if a == nil || len(a.EKCertificateRoots) != 1 || len(a.EKCertificateIntermediates) != 1 || len(a.EKCertificateCRLs) != 1 ||
		len(a.EndorsementKeyHashes) != 2 || a.EndorsementKeyHashes[1] != strings.ToLower(h2) || g.IoTHubHostName != "hub.example.net" {
		t.Fatalf("stored group %+v", a)
	}
	if out := e.must(runGroupCmd, "list"); !strings.Contains(out, "factory-a") || !strings.Contains(out, "tpm") {
		t.Fatalf("list:\n%s", out)
	}

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	onlyIntermediate := t.TempDir()
	if err := os.WriteFile(filepath.Join(onlyIntermediate, "ica.pem"), ekca.PEM(ca.Intermediate), 0o600); err != nil {
		t.Fatal(err)
	}
	leafDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(leafDir, "leaf.der"), ca.Issue(t, &key.PublicKey, ekca.EK{}), 0o600); err != nil {
		t.Fatal(err)
	}
	badHashes := filepath.Join(t.TempDir(), "bad.txt")
	if err := os.WriteFile(badHashes, []byte("not-a-hash\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"two attestations":   {[]string{"add", "g1", "--tpm-roots", dir, "--symmetric-key", "AAAA"}, "give one attestation"},
		"filter without dir": {[]string{"add", "g1", "--tpm-model", "x"}, "go with --tpm-roots"},
		"missing dir":        {[]string{"add", "g1", "--tpm-roots", filepath.Join(dir, "nope")}, "tpm-roots"},
		"no root":            {[]string{"add", "g1", "--tpm-roots", onlyIntermediate}, "no self-signed"},
		"leaf only":          {[]string{"add", "g1", "--tpm-roots", leafDir}, "no self-signed"},
		"bad hash":           {[]string{"add", "g1", "--tpm-roots", dir, "--ek-hashes", badHashes}, "line 1"},
	} {
		code, _, errs := e.run(runGroupCmd, tc.args...)
		if code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("%s: exit %d, stderr %s", name, code, errs)
		}
	}
	if _, err := e.st.GetGroup(context.Background(), "g1"); err == nil {
		t.Fatal("a refused command created a group")
	}

	// An individual enrollment that requires an EK certificate.
	ekFile := filepath.Join(t.TempDir(), "ek.tpm2b")
	if err := os.WriteFile(ekFile, adminTestEK(t), 0o600); err != nil {
		t.Fatal(err)
	}
	out = e.must(runEnrollmentCmd, "add", "dev-1", "--ek-file", ekFile, "--require-ek-cert")
	if !strings.Contains(out, "requireEkCertificate:") {
		t.Fatalf("enrollment add output:\n%s", out)
	}
	if en, err := e.st.GetEnrollment(context.Background(), "dev-1"); err != nil || !en.Attestation.TPM.RequireEKCertificate {
		t.Fatalf("stored enrollment %v", err)
	}
	if code, _, errs := e.run(runEnrollmentCmd, "add", "dev-2", "--symmetric-key", "AAAA", "--require-ek-cert"); code == 0 || !strings.Contains(errs, "--require-ek-cert") {
		t.Fatalf("--require-ek-cert without an EK: %d %s", code, errs)
	}
}
