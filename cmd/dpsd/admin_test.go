package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/tpmdps/dpsd/api"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/bolt"
)

const adminTestHost = "dps.admin.test"

// adminEnv is a real API server (HTTPS, bbolt) and the flags to reach it.
type adminEnv struct {
	t     testing.TB
	st    *bolt.Store
	flags []string
	cs    string
	dir   string
	// readerCS is the connection string of a read-only policy.
	readerCS string
}

func newAdminEnv(t *testing.T) *adminEnv { return newAdminEnvTB(t) }

// newAdminEnvTB is newAdminEnv for tests and benchmarks.
func newAdminEnvTB(t testing.TB) *adminEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := bolt.Open(filepath.Join(dir, "dps.db"), bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key, readerKey := make([]byte, 32), make([]byte, 32)
	rand.Read(key)
	rand.Read(readerKey)
	h, err := api.New(api.Config{Store: st, HostName: adminTestHost,
		Policies: []api.Policy{{Name: api.DefaultPolicyName, Key: key, Rights: api.RightAll},
			{Name: api.ReadOnlyPolicyName, Key: readerKey, Rights: api.RightRead}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	cs := fmt.Sprintf("HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s", adminTestHost, api.DefaultPolicyName, base64.StdEncoding.EncodeToString(key))
	readerCS := fmt.Sprintf("HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s", adminTestHost, api.ReadOnlyPolicyName, base64.StdEncoding.EncodeToString(readerKey))
	return &adminEnv{t: t, st: st, cs: cs, readerCS: readerCS, dir: dir,
		flags: []string{"--connection-string", cs, "--endpoint", srv.URL, "--ca-file", ca}}
}

// runAsReader runs one admin command with the read-only connection string.
func (e *adminEnv) runAsReader(fn func(context.Context, []string, io.Writer, io.Writer) int, args ...string) (int, string, string) {
	e.t.Helper()
	var out, errb bytes.Buffer
	code := fn(e.t.Context(), append(append(args, "--connection-string", e.readerCS), e.flags[2:]...), &out, &errb)
	return code, out.String(), errb.String()
}

// run runs one admin command in-process and returns its exit code and output.
func (e *adminEnv) run(fn func(context.Context, []string, io.Writer, io.Writer) int, args ...string) (int, string, string) {
	e.t.Helper()
	var out, errb bytes.Buffer
	code := fn(e.t.Context(), append(args, e.flags...), &out, &errb)
	return code, out.String(), errb.String()
}

// must runs a command that must succeed.
func (e *adminEnv) must(fn func(context.Context, []string, io.Writer, io.Writer) int, args ...string) string {
	e.t.Helper()
	code, out, errs := e.run(fn, args...)
	if code != 0 {
		e.t.Fatalf("%v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errs)
	}
	return out
}

func adminTestEK(t *testing.T) []byte {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub := tpm2.RSAEKTemplate
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()})
	return tpm2.Marshal(tpm2.New2B(pub))
}

func TestAdminEnrollmentCommands(t *testing.T) {
	e := newAdminEnv(t)
	// Symmetric key, generated; the table shows the key.
	out := e.must(runEnrollmentCmd, "add", "sensor-1", "--iothub", "hub1.example.net", "--device-id", "Sensor-One")
	if !strings.Contains(out, "primaryKey:") || !strings.Contains(out, "hub1.example.net") {
		t.Fatalf("add output:\n%s", out)
	}
	stored, err := e.st.GetEnrollment(t.Context(), "sensor-1")
	if err != nil || stored.DeviceID != "Sensor-One" || !strings.Contains(out, stored.Attestation.SymmetricKey.PrimaryKey) {
		t.Fatalf("stored %+v %v", stored, err)
	}
	// show hides the keys; --show-keys shows them, and only to the write right.
	if out := e.must(runEnrollmentCmd, "show", "sensor-1"); strings.Contains(out, stored.Attestation.SymmetricKey.PrimaryKey) ||
		!strings.Contains(out, "--show-keys") {
		t.Fatalf("show without --show-keys:\n%s", out)
	}
	var withKeys store.Enrollment
	if err := json.Unmarshal([]byte(e.must(runEnrollmentCmd, "show", "sensor-1", "--show-keys", "--json")), &withKeys); err != nil ||
		*withKeys.Attestation.SymmetricKey != *stored.Attestation.SymmetricKey {
		t.Fatalf("show --show-keys --json: %+v %v", withKeys.Attestation, err)
	}
	if code, out, errs := e.runAsReader(runEnrollmentCmd, "show", "sensor-1", "--show-keys"); code != 1 || !strings.Contains(errs, "403") ||
		strings.Contains(out+errs, stored.Attestation.SymmetricKey.PrimaryKey) {
		t.Fatalf("reader show --show-keys: %d %s %s", code, out, errs)
	}
	if code, out, _ := e.runAsReader(runEnrollmentCmd, "show", "sensor-1", "--json"); code != 0 || strings.Contains(out, stored.Attestation.SymmetricKey.PrimaryKey) {
		t.Fatalf("reader show: %d %s", code, out)
	}
	// Adding again fails unless --replace.
	if code, _, errs := e.run(runEnrollmentCmd, "add", "sensor-1"); code != 1 || !strings.Contains(errs, "already exists") {
		t.Fatalf("second add: %d %s", code, errs)
	}
	// TPM from a binary EK file (as tpm2_createek writes it).
	ekFile := filepath.Join(e.dir, "ek.pub")
	ek := adminTestEK(t)
	if err := os.WriteFile(ekFile, ek, 0o600); err != nil {
		t.Fatal(err)
	}
	e.must(runEnrollmentCmd, "add", "tpm-1", "--ek-file", ekFile)
	got, err := e.st.GetEnrollment(t.Context(), "tpm-1")
	if err != nil || got.Attestation.TPM.EndorsementKey != base64.StdEncoding.EncodeToString(ek) {
		t.Fatalf("tpm enrollment %+v %v", got, err)
	}
	// TPM from what dps-device ek prints; the registration id defaults to
	// the TPM's (the one dps-device provision uses by default).
	ek2 := adminTestEK(t)
	printed, _ := json.Marshal(map[string]string{"endorsementKey": base64.StdEncoding.EncodeToString(ek2), "registrationId": attest.RegistrationID(ek2)})
	ekJSON := filepath.Join(e.dir, "ek.json")
	if err := os.WriteFile(ekJSON, append(printed, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := e.must(runEnrollmentCmd, "add", "--ek-file", ekJSON); !strings.Contains(out, attest.RegistrationID(ek2)) {
		t.Fatalf("add --ek-file ek.json:\n%s", out)
	}
	if got, err := e.st.GetEnrollment(t.Context(), attest.RegistrationID(ek2)); err != nil || got.Attestation.TPM.EndorsementKey != base64.StdEncoding.EncodeToString(ek2) {
		t.Fatalf("enrollment from ek.json: %+v %v", got, err)
	}
	e.must(runEnrollmentCmd, "delete", attest.RegistrationID(ek2))
	os.WriteFile(ekJSON, []byte(`{"registrationId": "x"}`), 0o600)
	if code, _, errs := e.run(runEnrollmentCmd, "add", "--ek-file", ekJSON); code != 1 || !strings.Contains(errs, "endorsementKey") {
		t.Fatalf("JSON without a key: %d %s", code, errs)
	}
	if code, _, _ := e.run(runEnrollmentCmd, "add", "--symmetric-key", "AAAA"); code != 2 {
		t.Fatalf("add without an id or EK: %d", code)
	}
	// X.509 from a PEM file: the service fills in the certificate info.
	ck, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "cam-1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ck.PublicKey, ck)
	if err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(e.dir, "cam-1.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	if out := e.must(runEnrollmentCmd, "add", "cam-1", "--cert", certFile); !strings.Contains(out, "CN=cam-1") {
		t.Fatalf("x509 add:\n%s", out)
	}
	e.must(runEnrollmentCmd, "delete", "cam-1")
	// A bad EK is refused by the service.
	if code, _, errs := e.run(runEnrollmentCmd, "add", "tpm-2", "--ek", "AAQBAgME"); code != 1 || !strings.Contains(errs, "400") {
		t.Fatalf("bad ek: %d %s", code, errs)
	}
	// show --json, list (table and JSON).
	var shown store.Enrollment
	if err := json.Unmarshal([]byte(e.must(runEnrollmentCmd, "show", "TPM-1", "--json")), &shown); err != nil || shown.RegistrationID != "tpm-1" {
		t.Fatalf("show --json: %+v %v", shown, err)
	}
	adminTable := e.must(runEnrollmentCmd, "list")
	if !strings.Contains(adminTable, "REGISTRATION ID") || !strings.Contains(adminTable, "sensor-1") || !strings.Contains(adminTable, "tpm-1") {
		t.Fatalf("list:\n%s", adminTable)
	}
	var all []store.Enrollment
	if err := json.Unmarshal([]byte(e.must(runEnrollmentCmd, "list", "--json", "--page-size", "1")), &all); err != nil || len(all) != 2 {
		t.Fatalf("list --json: %d %v", len(all), err)
	}
	// disable / enable change the stored record.
	e.must(runEnrollmentCmd, "disable", "sensor-1")
	if s, _ := e.st.GetEnrollment(t.Context(), "sensor-1"); s.ProvisioningStatus != store.StatusDisabled {
		t.Fatalf("after disable: %s", s.ProvisioningStatus)
	}
	e.must(runEnrollmentCmd, "enable", "sensor-1")
	if s, _ := e.st.GetEnrollment(t.Context(), "sensor-1"); s.ProvisioningStatus != store.StatusEnabled {
		t.Fatalf("after enable: %s", s.ProvisioningStatus)
	}
	// delete, then show fails with exit 1.
	e.must(runEnrollmentCmd, "delete", "sensor-1")
	if code, _, errs := e.run(runEnrollmentCmd, "show", "sensor-1"); code != 1 || !strings.Contains(errs, "404") {
		t.Fatalf("show deleted: %d %s", code, errs)
	}
	// Usage errors exit 2.
	if code, _, _ := e.run(runEnrollmentCmd, "show"); code != 2 {
		t.Fatalf("show without id: %d", code)
	}
	if code, _, _ := e.run(runEnrollmentCmd, "frobnicate"); code != 2 {
		t.Fatalf("unknown subcommand: %d", code)
	}
	if code, _, _ := e.run(runEnrollmentCmd, "add", "x", "--ek", ekFile, "--symmetric-key", "AAAA"); code != 1 {
		t.Fatalf("two attestations: %d", code)
	}
}

func TestAdminConnectionStringFromEnv(t *testing.T) {
	e := newAdminEnv(t)
	t.Setenv(adminConnEnv, e.cs)
	var out, errb bytes.Buffer
	code := runEnrollmentCmd(t.Context(), []string{"list", "--json", e.flags[2], e.flags[3], e.flags[4], e.flags[5]}, &out, &errb)
	if code != 0 || strings.TrimSpace(out.String()) != "[]" {
		t.Fatalf("exit %d: %s %s", code, out.String(), errb.String())
	}
	t.Setenv(adminConnEnv, "")
	errb.Reset()
	if code := runEnrollmentCmd(t.Context(), []string{"list"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), adminConnEnv) {
		t.Fatalf("no connection string: %d %s", code, errb.String())
	}
}

func TestAdminGroupAndRegistrationCommands(t *testing.T) {
	e := newAdminEnv(t)
	out := e.must(runGroupCmd, "add", "line-1", "--iothub", "hub.example.net")
	if !strings.Contains(out, "enrollmentGroupId:") || !strings.Contains(out, "line-1") {
		t.Fatalf("group add:\n%s", out)
	}
	if code, _, _ := e.run(runGroupCmd, "add", "line-1"); code != 1 {
		t.Fatalf("duplicate group add: %d", code)
	}
	if out := e.must(runGroupCmd, "list"); !strings.Contains(out, "GROUP ID") || !strings.Contains(out, "line-1") {
		t.Fatalf("group list:\n%s", out)
	}
	sg, err := e.st.GetGroup(t.Context(), "line-1")
	if err != nil || !strings.Contains(out, sg.Attestation.SymmetricKey.PrimaryKey) {
		t.Fatalf("group add does not show the generated key: %+v %v\n%s", sg, err, out)
	}
	var g store.Group
	if err := json.Unmarshal([]byte(e.must(runGroupCmd, "show", "line-1", "--json")), &g); err != nil || g.Attestation.SymmetricKey == nil ||
		g.Attestation.SymmetricKey.PrimaryKey != "" {
		t.Fatalf("group show: %+v %v", g, err)
	}
	if err := json.Unmarshal([]byte(e.must(runGroupCmd, "show", "line-1", "--json", "--show-keys")), &g); err != nil ||
		*g.Attestation.SymmetricKey != *sg.Attestation.SymmetricKey {
		t.Fatalf("group show --show-keys: %+v %v", g, err)
	}
	if code, _, errs := e.runAsReader(runGroupCmd, "show", "line-1", "--show-keys"); code != 1 || !strings.Contains(errs, "403") {
		t.Fatalf("reader group show --show-keys: %d %s", code, errs)
	}
	for _, id := range []string{"dev-a", "dev-b"} {
		_, err := e.st.RecordRegistration(t.Context(), &store.Registration{RegistrationID: id, Status: store.RegistrationAssigned,
			EnrollmentGroupID: "line-1", AssignedHub: "hub.example.net", DeviceID: id},
			&store.Operation{ID: "op-" + id, RegistrationID: id, Status: store.RegistrationAssigned, CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
	}
	if out := e.must(runRegistrationCmd, "list", "line-1"); !strings.Contains(out, "dev-a") || !strings.Contains(out, "dev-b") {
		t.Fatalf("registration list:\n%s", out)
	}
	if out := e.must(runRegistrationCmd, "show", "dev-a"); !strings.Contains(out, "assignedHub:") || !strings.Contains(out, "hub.example.net") {
		t.Fatalf("registration show:\n%s", out)
	}
	e.must(runRegistrationCmd, "delete", "dev-a")
	if _, err := e.st.GetRegistration(t.Context(), "dev-a"); err == nil {
		t.Fatal("registration still there")
	}
	e.must(runGroupCmd, "delete", "line-1")
	if code, _, _ := e.run(runGroupCmd, "show", "line-1"); code != 1 {
		t.Fatalf("show deleted group: %d", code)
	}
}

func TestAdminImportCSV(t *testing.T) {
	e := newAdminEnv(t)
	ek := base64.StdEncoding.EncodeToString(adminTestEK(t))
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	var b strings.Builder
	b.WriteString("registrationId,attestationType,endorsementKey,primaryKey,iotHubHostName,deviceId\n")
	const n = 2500
	for i := range n {
		switch i {
		case 3:
			b.WriteString("bad id!,symmetricKey,,,hub.example.net,\n") // line 5: rejected locally
		case 10:
			b.WriteString("tpm-bad,tpm,AAQBAgME,,hub.example.net,\n") // line 12: rejected by the service
		case 20:
			fmt.Fprintf(&b, "tpm-%d,tpm,%s,,hub.example.net,tpm-device\n", i, ek) // line 22
		default:
			fmt.Fprintf(&b, "dev-%d,symmetricKey,,%s,hub.example.net,\n", i, key)
		}
	}
	file := filepath.Join(e.dir, "factory.csv")
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := e.run(runEnrollmentCmd, "import", file)
	if code != 1 {
		t.Fatalf("import with bad rows: exit %d\n%s\n%s", code, out, errs)
	}
	if !strings.Contains(out, fmt.Sprintf("created %d, updated 0, failed 2", n-2)) {
		t.Fatalf("summary: %s\nstderr: %s", out, errs)
	}
	if !strings.Contains(errs, "line 5:") || !strings.Contains(errs, "line 12: tpm-bad:") || !strings.Contains(errs, "import: ") {
		t.Fatalf("stderr:\n%s", errs)
	}
	count, err := e.st.CountEnrollments(t.Context())
	if err != nil || count != n-2 {
		t.Fatalf("store has %d enrollments (%v)", count, err)
	}
	got, err := e.st.GetEnrollment(t.Context(), "tpm-20")
	if err != nil || got.DeviceID != "tpm-device" || got.Attestation.TPM.EndorsementKey != ek {
		t.Fatalf("tpm-20 %+v %v", got, err)
	}
	// Importing again updates instead of failing.
	code, out, errs = e.run(runEnrollmentCmd, "import", file, "--json", "--chunk", "700")
	var sum adminImportSummary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("json summary %q: %v", out, err)
	}
	if code != 1 || sum.Created != 0 || sum.Updated != n-2 || sum.Failed != 2 || sum.Failures[0].Line != 5 {
		t.Fatalf("re-import: exit %d %+v\n%s", code, sum, errs)
	}
	// With --no-update, existing ids are failures.
	code, out, _ = e.run(runEnrollmentCmd, "import", file, "--no-update")
	if code != 1 || !strings.Contains(out, fmt.Sprintf("created 0, updated 0, failed %d", n)) {
		t.Fatalf("--no-update: %d %s", code, out)
	}
}

func TestAdminImportJSONLines(t *testing.T) {
	e := newAdminEnv(t)
	lines := []string{
		`{"registrationId":"j-1","attestation":{"type":"symmetricKey"},"iotHubHostName":"hub.example.net"}`,
		``,
		`{"registrationId":"j-2","attestation":{"type":"symmetricKey"}`, // line 3: truncated
		`{"registrationId":"j-3","attestation":{"type":"symmetricKey"},"provisioningStatus":"disabled"}`,
		`{"registrationId":"j-1","attestation":{"type":"symmetricKey"},"iotHubHostName":"hub2.example.net"}`, // same id again: an update
	}
	file := filepath.Join(e.dir, "factory.jsonl")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := e.run(runEnrollmentCmd, "import", file)
	if code != 1 || !strings.Contains(out, "created 2, updated 1, failed 1") || !strings.Contains(errs, "line 3:") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errs)
	}
	j1, err := e.st.GetEnrollment(t.Context(), "j-1")
	if err != nil || j1.IoTHubHostName != "hub2.example.net" {
		t.Fatalf("j-1 %+v %v", j1, err)
	}
	if j3, err := e.st.GetEnrollment(t.Context(), "j-3"); err != nil || j3.ProvisioningStatus != store.StatusDisabled {
		t.Fatalf("j-3 %+v %v", j3, err)
	}
	// A CSV header with an unknown column stops before sending anything.
	bad := filepath.Join(e.dir, "bad.csv")
	os.WriteFile(bad, []byte("registrationId,colour\nx,red\n"), 0o600)
	if code, _, errs := e.run(runEnrollmentCmd, "import", bad); code != 1 || !strings.Contains(errs, "unknown column") {
		t.Fatalf("bad header: %d %s", code, errs)
	}
}

// TestAdminEnrollmentSharedEKWarning: enrolling one TPM's endorsement key
// under a second registration id succeeds and prints the service's warning
// on stderr, naming both ids; the first enrollment prints none.
func TestAdminEnrollmentSharedEKWarning(t *testing.T) {
	e := newAdminEnv(t)
	ek := base64.StdEncoding.EncodeToString(adminTestEK(t))
	code, out, errs := e.run(runEnrollmentCmd, "add", "tpm-first", "--ek", ek)
	if code != 0 || strings.Contains(errs, "warning") {
		t.Fatalf("first add: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	code, out, errs = e.run(runEnrollmentCmd, "add", "tpm-second", "--ek", ek)
	if code != 0 || !strings.Contains(out, "tpm-second") {
		t.Fatalf("second add: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	if !strings.HasPrefix(errs, "warning: ") || !strings.Contains(errs, "tpm-second (also tpm-first)") || strings.Contains(out, "warning") {
		t.Fatalf("second add: the warning is not on stderr:\nstdout: %s\nstderr: %s", out, errs)
	}
	if _, err := e.st.GetEnrollment(t.Context(), "tpm-second"); err != nil {
		t.Fatalf("the warned enrollment was not stored: %v", err)
	}
}
