package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/swtpmtest"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/store"
)

// runCmd runs the command in process and returns its exit code and output.
func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

type ekOut struct {
	EndorsementKey string `json:"endorsementKey"`
	RegistrationID string `json:"registrationId"`
}

func parseEK(t *testing.T, out string) (ekOut, []byte) {
	t.Helper()
	var e ekOut
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		t.Fatalf("ek output %q: %v", out, err)
	}
	raw, err := base64.StdEncoding.DecodeString(e.EndorsementKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.ParsePublic(raw); err != nil {
		t.Fatalf("EK does not parse: %v", err)
	}
	if e.RegistrationID != attest.RegistrationID(raw) || e.RegistrationID == "" {
		t.Fatalf("registrationId %q does not match the EK", e.RegistrationID)
	}
	return e, raw
}

// TestEKSimulator also checks what --help says: the simulator's state does
// not outlive the command, so two runs see two different EKs.
func TestEKSimulator(t *testing.T) {
	code, out1, stderr := runCmd(t, "ek", "--tpm", "simulator")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	e1, _ := parseEK(t, out1)
	code, out2, _ := runCmd(t, "ek", "--tpm", "simulator")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	e2, _ := parseEK(t, out2)
	if e1.EndorsementKey == e2.EndorsementKey {
		t.Fatalf("two simulator runs gave the same EK; the help text says otherwise")
	}
}

func TestEKSwtpmPersists(t *testing.T) {
	sw := swtpmtest.Start(t)
	code, out1, stderr := runCmd(t, "ek", "--tpm", sw.Selector(), "--ecc")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	_, raw := parseEK(t, out1)
	if p, _ := attest.ParsePublic(raw); p == nil {
		t.Fatal("unparsable")
	}
	code, out2, _ := runCmd(t, "ek", "--tpm", sw.Selector())
	if code != 0 || out1 != out2 {
		t.Fatalf("second ek run (exit %d) differs: the EK was not persisted\n%s\n%s", code, out1, out2)
	}
}

// enrollFromEK enrolls the EK printed by "ek".
func enrollFromEK(t *testing.T, srv *dpsdtest.Server, e ekOut, status string) {
	t.Helper()
	_, err := srv.Store.PutEnrollment(context.Background(), &store.Enrollment{
		RegistrationID: e.RegistrationID,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation:        store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: e.EndorsementKey}},
			IoTHubHostName:     dpsdtest.DefaultHub,
			ProvisioningStatus: status,
		},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
}

func writeCA(t *testing.T, srv *dpsdtest.Server) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, srv.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestProvisionEndToEnd is the operator's flow: ek, enroll, provision over
// TLS on a swtpm, then sign a hub token with the key now in the TPM.
func TestProvisionEndToEnd(t *testing.T) {
	srv := dpsdtest.Start(t, dpsdtest.Options{RetryAfter: -1})
	sw := swtpmtest.Start(t)
	code, out, stderr := runCmd(t, "ek", "--tpm", sw.Selector())
	if code != 0 {
		t.Fatalf("ek exit %d: %s", code, stderr)
	}
	e, _ := parseEK(t, out)
	enrollFromEK(t, srv, e, store.StatusEnabled)

	host, port, _ := net.SplitHostPort(srv.TLSAddr)
	code, out, stderr = runCmd(t, "provision", "--host", host, "--port", port, "--id-scope", srv.IDScope,
		"--tpm", sw.Selector(), "--ca-file", writeCA(t, srv), "--verbose", "--payload", `{"fw":"1.2"}`, "--timeout", "60s")
	if code != 0 {
		t.Fatalf("provision exit %d: %s", code, stderr)
	}
	var res device.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("provision output %q: %v", out, err)
	}
	if res.Status != "assigned" || res.AssignedHub != dpsdtest.DefaultHub || res.RegistrationID != e.RegistrationID ||
		res.HubKey == nil || res.HubKey.Handle != "0x81000101" {
		t.Fatalf("result %+v", res)
	}
	// --verbose logs the protocol steps, and never a token or signature.
	for _, want := range []string{"phase=challenge", "challenge received", "phase=reconnect", "assigned"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("verbose log lacks %q", want)
		}
	}
	if strings.Contains(stderr, "SharedAccessSignature") || strings.Contains(stderr, "sig=") {
		t.Errorf("verbose log leaks a SAS token:\n%s", stderr)
	}

	code, out, stderr = runCmd(t, "hub-sas", "--tpm", sw.Selector(), "--hub", res.AssignedHub, "--device-id", res.DeviceID, "--ttl", "10m")
	if code != 0 {
		t.Fatalf("hub-sas exit %d: %s", code, stderr)
	}
	tok, err := attest.ParseSASToken(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("hub-sas output %q: %v", out, err)
	}
	reg, err := srv.Store.GetRegistration(context.Background(), res.RegistrationID)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Verify(reg.HubKey, device.HubResource(res.AssignedHub, res.DeviceID), time.Now(), attest.SASPolicy{}); err != nil {
		t.Fatalf("hub token does not verify with the service's hub key: %v", err)
	}
}

func TestExitCodes(t *testing.T) {
	srv := dpsdtest.Start(t, dpsdtest.Options{RetryAfter: -1})
	sw := swtpmtest.Start(t)
	host, port, _ := net.SplitHostPort(srv.TCPAddr)
	base := []string{"provision", "--host", host, "--port", port, "--id-scope", srv.IDScope, "--plain", "--tpm", sw.Selector(), "--timeout", "20s"}

	// 2: not enrolled (401 at the challenge).
	code, out, stderr := runCmd(t, base...)
	if code != exitRefused || !strings.Contains(stderr, "401") || out != "" {
		t.Fatalf("not enrolled: exit %d, out %q, err %q", code, out, stderr)
	}
	// 2: enrolled but disabled: not assigned, the result is still printed.
	_, ekJSON, _ := runCmd(t, "ek", "--tpm", sw.Selector())
	e, _ := parseEK(t, ekJSON)
	enrollFromEK(t, srv, e, store.StatusDisabled)
	code, out, stderr = runCmd(t, base...)
	if code != exitRefused || !strings.Contains(stderr, "not assigned") {
		t.Fatalf("disabled: exit %d, err %q", code, stderr)
	}
	var res device.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Status != "disabled" || res.RegistrationID != e.RegistrationID {
		t.Fatalf("disabled: printed %q", out)
	}
	// 3: nothing listening.
	deadPort := strconv.Itoa(testkit.FreePort(t))
	code, _, stderr = runCmd(t, "provision", "--host", "127.0.0.1", "--port", deadPort, "--id-scope", srv.IDScope,
		"--plain", "--tpm", sw.Selector(), "--registration-id", "x1", "--timeout", "5s")
	if code != exitTransport {
		t.Fatalf("dead port: exit %d, err %q", code, stderr)
	}
	// 3: TLS to a server whose CA we do not trust (system roots).
	tlsHost, tlsPort, _ := net.SplitHostPort(srv.TLSAddr)
	code, _, stderr = runCmd(t, "provision", "--host", tlsHost, "--port", tlsPort, "--id-scope", srv.IDScope,
		"--tpm", sw.Selector(), "--registration-id", "x1", "--timeout", "5s")
	if code != exitTransport || !strings.Contains(stderr, "certificate") {
		t.Fatalf("untrusted TLS: exit %d, err %q", code, stderr)
	}
	// 4: no TPM there.
	code, _, stderr = runCmd(t, "ek", "--tpm", "swtpm:127.0.0.1:"+deadPort)
	if code != exitTPM {
		t.Fatalf("dead swtpm: exit %d, err %q", code, stderr)
	}
	code, _, _ = runCmd(t, "hub-sas", "--tpm", sw.Selector(), "--hub", "h", "--device-id", "d", "--hub-handle", "0x81000999")
	if code != exitTPM {
		t.Fatalf("hub-sas without a hub key: exit %d", code)
	}
	// 1: usage.
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"provision", "--id-scope", "s"},
		{"provision", "--host", "h"},
		{"provision", "--host", "h", "--id-scope", "s", "--bogus"},
		{"provision", "--host", "h", "--id-scope", "s", "--plain", "--websocket"},
		{"provision", "--host", "h", "--id-scope", "s", "--payload", "{"},
		{"provision", "--host", "h", "--id-scope", "s", "--hub-handle", "0x01000000"},
		{"provision", "--host", "h", "--id-scope", "s", "--tpm", "tpm0"},
		{"ek", "extra"},
		{"hub-sas", "--hub", "h"},
	} {
		if code, _, _ := runCmd(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
	}
	// 0: help.
	code, out, stderr = runCmd(t, "help")
	if code != 0 || !strings.Contains(out, "Exit codes") || !strings.Contains(out, "simulator") {
		t.Fatalf("help: exit %d %q", code, out)
	}
	code, _, stderr = runCmd(t, "provision", "--help")
	if code != 0 || !strings.Contains(stderr, "Exit codes") || !strings.Contains(stderr, "--tpm simulator see two different TPMs") {
		t.Fatalf("provision --help: exit %d %q", code, stderr)
	}
}
