package swtpmtest

// EK certificates on swtpm, made the two ways a test can: swtpm_setup
// --create-ek-cert with swtpm's local CA tool signing with the test's own
// CA (an RSA-2048 EK and its certificate; swtpm 0.7.1 makes ECC EK
// certificates for NIST P-384 only), and swtpm_cert for any key followed
// by tpm2_nvdefine and tpm2_nvwrite with platform authorization (a P-256
// EK certificate at 0x01c0000a, as manufacturers store them).

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// LocalCA is the CA swtpm's tools sign EK certificates with: PEM files of
// the signing key and its certificate (ekca.CA.LocalCAFiles writes them).
type LocalCA struct {
	KeyFile, CertFile string
}

// checkCertTools fails t if swtpm_setup, swtpm_localca or swtpm_cert is missing.
func checkCertTools(t testing.TB) {
	t.Helper()
	CheckTools(t)
	for _, bin := range []string{"swtpm_setup", "swtpm_localca", "swtpm_cert", "tpm2_nvdefine", "tpm2_nvwrite"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("\n\n*** swtpmtest: %s is NOT INSTALLED.\n*** Install it: %s\n*** These tests do not skip.\n\n", bin, installHint)
		}
	}
}

// ManufactureWithEKCert makes a fresh TPM state the way swtpm_setup
// manufactures one with --create-ek-cert, the EK certificate signed by ca:
// an RSA-2048 EK persisted at 0x81010001 with its certificate in NV
// 0x01c00002 (and a P-384 one at 0x81010016 / 0x01c00016). It returns the
// state directory, for StartDir. Each call has its own local CA state
// directory (the tool locks and rewrites its serial file there).
func ManufactureWithEKCert(t testing.TB, ca LocalCA) string {
	t.Helper()
	checkCertTools(t)
	dir := t.TempDir()
	state, localState := filepath.Join(dir, "state"), filepath.Join(dir, "localca")
	for _, d := range []string{state, localState} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// The key of the local CA's config is "signingkey" (the man page of
	// 0.7.1 misspells it "signinkey").
	localConf := filepath.Join(dir, "swtpm-localca.conf")
	writeFile(t, localConf, []byte(fmt.Sprintf("statedir = %s\nsigningkey = %s\nissuercert = %s\ncertserial = %s\n",
		localState, ca.KeyFile, ca.CertFile, filepath.Join(localState, "certserial"))))
	options := filepath.Join(dir, "swtpm-localca.options")
	writeFile(t, options, []byte("--platform-manufacturer dpsd\n--platform-version 2.1\n--platform-model test\n"))
	setupConf := filepath.Join(dir, "swtpm_setup.conf")
	localca, err := exec.LookPath("swtpm_localca")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, setupConf, []byte(fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
		localca, localConf, options)))
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	// Without --config swtpm_setup would use /etc/swtpm_setup.conf and its CA.
	cmd := exec.CommandContext(ctx, "swtpm_setup", "--tpm2", "--tpmstate", state, "--create-ek-cert",
		"--config", setupConf, "--overwrite")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("swtpmtest: swtpm_setup: %v\n%s", err, out)
	}
	return state
}

// ECCEKCert makes a P-256 EK certificate with swtpm_cert for the point
// (x, y), signed by ca, with the TPM names swtpm uses, valid for days; it
// returns the DER.
func ECCEKCert(t testing.TB, ca LocalCA, x, y []byte, serial int, days int) []byte {
	t.Helper()
	checkCertTools(t)
	out := filepath.Join(t.TempDir(), "ek-p256.der")
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	// --ecc-x/--ecc-y give KeyAgreement, the key usage of an ECC EK
	// (--pubkey would write KeyEncipherment).
	cmd := exec.CommandContext(ctx, "swtpm_cert", "--tpm2", "--type", "ek",
		"--ecc-x", fmt.Sprintf("%x", x), "--ecc-y", fmt.Sprintf("%x", y), "--ecc-curveid", "secp256r1",
		"--signkey", ca.KeyFile, "--issuercert", ca.CertFile, "--out-cert", out,
		"--serial", strconv.Itoa(serial), "--days", strconv.Itoa(days),
		"--tpm-manufacturer", "id:00001014", "--tpm-model", "swtpm", "--tpm-version", "id:20191023",
		"--tpm-spec-family", "2.0", "--tpm-spec-level", "0", "--tpm-spec-revision", "164")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("swtpmtest: swtpm_cert: %v\n%s", err, msg)
	}
	return readFile(t, out)
}

// WriteNV stores data in NV index as a manufacturer stores an EK
// certificate (tpm2_nvdefine and tpm2_nvwrite with platform authorization,
// the attributes swtpm_setup gives its certificate indices), removing an
// index already there first.
func (p *TPM) WriteNV(t testing.TB, index uint32, data []byte) {
	t.Helper()
	idx := fmt.Sprintf("0x%08x", index)
	// Remove what is there; a missing index is fine (TPM_RC_HANDLE).
	if out, err := p.RunErr(t, nil, "tpm2_nvundefine", idx, "-C", "p"); err != nil && !strings.Contains(strings.ToLower(string(out)), "0x18b") {
		t.Fatalf("swtpmtest: tpm2_nvundefine %s: %v\n%s", idx, err, out)
	}
	in := p.file("nv.bin")
	writeFile(t, in, data)
	p.Run(t, nil, "tpm2_nvdefine", idx, "-C", "p", "-s", strconv.Itoa(len(data)),
		"-a", "ppwrite|writedefine|ppread|ownerread|authread|no_da|platformcreate")
	p.Run(t, nil, "tpm2_nvwrite", idx, "-C", "p", "-i", in)
}
