package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/swtpmtest"
	"github.com/tpmdps/dpsd/internal/testkit/ekca"
	"github.com/tpmdps/dpsd/store"
)

// TestEKCertificateCommands: dps-device ek shows the EK certificate the
// TPM holds with its hash and TPM names; provision sends it, so a TPM
// group admits the device; --no-ek-cert and --ek-cert change what is sent.
func TestEKCertificateCommands(t *testing.T) {
	ca := ekca.New(t, "vendor A")
	keyFile, certFile := ca.LocalCAFiles(t, t.TempDir())
	sw := swtpmtest.StartDir(t, swtpmtest.ManufactureWithEKCert(t, swtpmtest.LocalCA{KeyFile: keyFile, CertFile: certFile}))
	code, out, stderr := runCmd(t, "ek", "--tpm", sw.Selector())
	if code != 0 {
		t.Fatalf("ek exit %d: %s", code, stderr)
	}
	var info ekInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	ek, _ := base64.StdEncoding.DecodeString(info.EndorsementKey)
	pub, err := attest.ParsePublic(ek)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := attest.EKHash(pub)
	certDER, _ := base64.StdEncoding.DecodeString(info.EndorsementKeyCertificate)
	c, err := attest.ParseEKCertificate(certDER)
	if err != nil || c.MatchesEK(pub) != nil || info.EndorsementKeyHash != hex.EncodeToString(h[:]) ||
		info.TPMManufacturer != "id:00001014" || info.TPMModel != "swtpm" || info.EKCertificateError != "" {
		t.Fatalf("ek output %+v (%v)", info, err)
	}

	srv := dpsdtest.Start(t, dpsdtest.Options{RetryAfter: -1})
	_, err = srv.Store.PutGroup(context.Background(), &store.Group{EnrollmentGroupID: "factory-a", EnrollmentSettings: store.EnrollmentSettings{
		Attestation: store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{
			EKCertificateRoots: []string{string(ekca.PEM(ca.Root))}, EKCertificateIntermediates: []string{string(ekca.PEM(ca.Intermediate))},
			EndorsementKeyHashes: []string{info.EndorsementKeyHash}}},
		IoTHubHostName: dpsdtest.DefaultHub}}, "")
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(srv.TCPAddr)
	base := []string{"provision", "--host", host, "--port", port, "--id-scope", srv.IDScope, "--plain", "--tpm", sw.Selector(), "--timeout", "30s"}
	if code, _, stderr := runCmd(t, append(base, "--no-ek-cert")...); code != exitRefused {
		t.Fatalf("--no-ek-cert: exit %d: %s", code, stderr)
	}
	// --ek-cert sends a file instead of NV: another key's certificate is refused.
	other := filepath.Join(t.TempDir(), "other.pem")
	otherKey := ekca.New(t, "x").IntermediateKey
	if err := os.WriteFile(other, ekca.PEMDER(ca.Issue(t, &otherKey.PublicKey, ekca.EK{})), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCmd(t, append(base, "--ek-cert", other)...); code != exitRefused {
		t.Fatalf("--ek-cert of another key: exit %d: %s", code, stderr)
	}
	code, out, stderr = runCmd(t, base...)
	if code != 0 {
		t.Fatalf("provision exit %d: %s", code, stderr)
	}
	var res device.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	var st device.RegistrationState
	if err := json.Unmarshal(res.RegistrationState, &st); err != nil || res.Status != "assigned" || res.RegistrationID != info.RegistrationID ||
		st.TPM == nil || st.TPM.EnrollmentGroupID != "factory-a" {
		t.Fatalf("result %s (%v)", out, err)
	}
	// Usage errors: both flags, a file that is no certificate, TPM flags with a key.
	notCert := filepath.Join(t.TempDir(), "x.pem")
	_ = os.WriteFile(notCert, []byte("hello"), 0o600)
	for _, args := range [][]string{
		append(append([]string{}, base...), "--ek-cert", other, "--no-ek-cert"),
		append(append([]string{}, base...), "--ek-cert", notCert),
		{"provision", "--host", "h", "--id-scope", "s", "--symmetric-key", "AAAA", "--registration-id", "r", "--no-ek-cert"},
	} {
		if code, _, stderr := runCmd(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d: %s", strings.Join(args, " "), code, stderr)
		}
	}
}
