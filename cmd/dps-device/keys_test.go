package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/store"
)

// TestProvisionKeysAndCertificates runs "provision" in process with
// --symmetric-key (primary and secondary), --group-key and --cert/--key,
// against the in-process server over TLS and secure WebSocket.
func TestProvisionKeysAndCertificates(t *testing.T) {
	srv := dpsdtest.Start(t, dpsdtest.Options{RetryAfter: -1, WebSocket: true})
	ctx := context.Background()
	b64 := base64.StdEncoding.EncodeToString
	primary, secondary, groupKey := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 64)
	if _, err := srv.Store.PutEnrollment(ctx, &store.Enrollment{RegistrationID: "cli-sym",
		EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
			PrimaryKey: b64(primary), SecondaryKey: b64(secondary)}},
			ProvisioningStatus: store.StatusEnabled}}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Store.PutGroup(ctx, &store.Group{EnrollmentGroupID: "cli-fleet",
		EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
			PrimaryKey: b64(groupKey)}},
			ProvisioningStatus: store.StatusEnabled}}, ""); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	root, err := devca.NewRootCA("cli root", now, time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate("cli intermediate", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Store.PutGroup(ctx, &store.Group{EnrollmentGroupID: "cli-certs",
		EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
			SigningCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: string(root.CertPEM())}}}},
			ProvisioningStatus: store.StatusEnabled}}, ""); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	leafPEM, keyPEM, err := inter.IssueClient("cli-cert", now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "dev.pem"), filepath.Join(dir, "dev.key")
	if err := os.WriteFile(certFile, append(leafPEM, inter.CertPEM()...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	tlsHost, tlsPort, _ := net.SplitHostPort(srv.TLSAddr)
	_, wsPort, _ := net.SplitHostPort(srv.WSAddr)
	caFile := writeCA(t, srv)
	tlsBase := []string{"provision", "--host", tlsHost, "--port", tlsPort, "--id-scope", srv.IDScope, "--ca-file", caFile, "--timeout", "30s"}
	wsBase := []string{"provision", "--host", "localhost", "--port", wsPort, "--id-scope", srv.IDScope, "--ca-file", caFile, "--websocket", "--timeout", "30s"}
	cases := []struct {
		name   string
		args   []string
		regID  string
		symGrp string // registrationState.symmetricKey.enrollmentGroupId
		x509   string // registrationState.x509.enrollmentGroupId
	}{
		{"symmetric primary", append(tlsBase, "--registration-id", "cli-sym", "--symmetric-key", b64(primary)), "cli-sym", "", ""},
		{"symmetric secondary", append(wsBase, "--registration-id", "cli-sym", "--symmetric-key", b64(secondary)), "cli-sym", "", ""},
		{"group key", append(tlsBase, "--registration-id", "Cli-Member", "--group-key", b64(groupKey)), "Cli-Member", "cli-fleet", ""},
		{"certificate", append(tlsBase, "--cert", certFile, "--key", keyFile), "cli-cert", "", "cli-certs"},
		{"certificate over wss", append(wsBase, "--cert", certFile, "--key", keyFile, "--registration-id", "cli-cert"), "cli-cert", "", "cli-certs"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out, stderr := runCmd(t, c.args...)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var res device.Result
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("output %q: %v", out, err)
			}
			if res.Status != "assigned" || !strings.EqualFold(res.RegistrationID, c.regID) || res.AssignedHub != dpsdtest.DefaultHub || res.HubKey != nil {
				t.Fatalf("result %+v", res)
			}
			var st struct {
				SymmetricKey *struct {
					EnrollmentGroupID string `json:"enrollmentGroupId"`
				} `json:"symmetricKey"`
				X509 *struct {
					EnrollmentGroupID string `json:"enrollmentGroupId"`
				} `json:"x509"`
			}
			if err := json.Unmarshal(res.RegistrationState, &st); err != nil {
				t.Fatal(err)
			}
			gotSym, gotX509 := "", ""
			if st.SymmetricKey != nil {
				gotSym = st.SymmetricKey.EnrollmentGroupID
			}
			if st.X509 != nil {
				gotX509 = st.X509.EnrollmentGroupID
			}
			if gotSym != c.symGrp || gotX509 != c.x509 || (c.x509 != "") != (st.X509 != nil) {
				t.Fatalf("registrationState %s", res.RegistrationState)
			}
		})
	}

	// Wrong keys are refused at CONNECT (exit 2).
	if code, _, stderr := runCmd(t, append(tlsBase, "--registration-id", "Cli-Member", "--group-key", b64(bytes.Repeat([]byte{9}, 32)))...); code != exitRefused {
		t.Fatalf("wrong group key: exit %d: %s", code, stderr)
	}
	if code, _, _ := runCmd(t, append(tlsBase, "--registration-id", "cli-sym", "--symmetric-key", b64(groupKey))...); code != exitRefused {
		t.Fatalf("wrong symmetric key: exit %d", code)
	}
	// A certificate of another CN than the registration id is refused.
	if code, _, _ := runCmd(t, append(tlsBase, "--registration-id", "cli-other", "--cert", certFile, "--key", keyFile)...); code != exitRefused {
		t.Fatalf("CN mismatch: exit %d", code)
	}
}

// TestProvisionKeyFlagUsage: the attestation flags exclude each other and
// the TPM flags; mistakes are usage errors (exit 1), found before any I/O.
func TestProvisionKeyFlagUsage(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	base := []string{"provision", "--host", "h", "--id-scope", "s", "--timeout", "2s"}
	for _, extra := range [][]string{
		{"--registration-id", "d", "--symmetric-key", key, "--group-key", key},
		{"--registration-id", "d", "--symmetric-key", key, "--cert", "c.pem", "--key", "k.pem"},
		{"--registration-id", "d", "--symmetric-key", key, "--tpm", "simulator"},
		{"--registration-id", "d", "--group-key", key, "--ecc"},
		{"--cert", "c.pem", "--key", "k.pem", "--hub-handle", "0x81000101"},
		{"--symmetric-key", key},
		{"--group-key", key},
		{"--registration-id", "d", "--symmetric-key", "not base64!"},
		{"--registration-id", "d", "--symmetric-key", base64.StdEncoding.EncodeToString([]byte("short"))},
		{"--registration-id", "-bad-", "--group-key", key},
		{"--cert", "c.pem"},
		{"--key", "k.pem"},
		{"--cert", "c.pem", "--key", "k.pem", "--plain"},
		{"--cert", filepath.Join(t.TempDir(), "missing.pem"), "--key", "k.pem"},
	} {
		code, _, stderr := runCmd(t, append(append([]string(nil), base...), extra...)...)
		if code != exitUsage {
			t.Errorf("%q: exit %d, want %d (%s)", extra, code, exitUsage, stderr)
		}
	}
	code, out, _ := runCmd(t, "help")
	if code != 0 || !strings.Contains(out, "--group-key") {
		t.Fatalf("help does not mention the key flags: %q", out)
	}
}

// TestSAS: dps-device sas prints the token provision would send, signed
// with the enrollment key (or the key derived from a group key), for the
// scope and registration id given; the service's own parser accepts it.
func TestSAS(t *testing.T) {
	key := bytes.Repeat([]byte{5}, 32)
	b64 := base64.StdEncoding.EncodeToString(key)
	for _, c := range []struct {
		flag    string
		signing []byte
	}{
		{"--symmetric-key", key},
		{"--group-key", attest.DeriveDeviceKey(key, "sas-dev")},
	} {
		code, out, errs := runCmd(t, "sas", "--id-scope", "0ne00000ABC", "--registration-id", "sas-dev", c.flag, b64, "--ttl", "2h")
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", c.flag, code, errs)
		}
		tok, err := attest.ParseSASToken(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("%s: %q: %v", c.flag, out, err)
		}
		if err := tok.Verify(c.signing, attest.RegistrationResource("0ne00000ABC", "sas-dev"), time.Now(), attest.SASPolicy{MaxLifetime: 3 * time.Hour}); err != nil {
			t.Fatalf("%s: token does not verify: %v", c.flag, err)
		}
		if tok.Expiry.Before(time.Now().Add(time.Hour)) {
			t.Fatalf("%s: --ttl 2h gave expiry %v", c.flag, tok.Expiry)
		}
	}
	for _, args := range [][]string{
		{"sas", "--id-scope", "0ne00000ABC", "--registration-id", "sas-dev"},
		{"sas", "--registration-id", "sas-dev", "--symmetric-key", b64},
		{"sas", "--id-scope", "0ne00000ABC", "--registration-id", "sas-dev", "--symmetric-key", "!!"},
		{"sas", "--id-scope", "0ne00000ABC", "--registration-id", "sas-dev", "--symmetric-key", b64, "--group-key", b64},
	} {
		if code, out, _ := runCmd(t, args...); code != exitUsage || out != "" {
			t.Errorf("%v: exit %d, output %q", args, code, out)
		}
	}
}

// TestVersion prints the command's name and build.
func TestVersion(t *testing.T) {
	code, out, _ := runCmd(t, "version")
	if code != 0 || !strings.HasPrefix(out, "dps-device ") {
		t.Fatalf("version: %d %q", code, out)
	}
	if code, _, _ := runCmd(t, "version", "extra"); code != exitUsage {
		t.Fatalf("version with an argument: %d", code)
	}
}
