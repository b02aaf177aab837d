package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
	"github.com/tpmdps/dpsd/store"
)

// buildDPSD compiles this command into a temporary directory.
func buildDPSD(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	bin := filepath.Join(t.TempDir(), "dpsd")
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// started is the "dpsd started" log line.
type started struct {
	IDScope string `json:"idScope"`
	MQTT    string `json:"mqtt"`
	MQTTS   string `json:"mqtts"`
	CACert  string `json:"caCert"`
	API     string `json:"api"`
	CSFile  string `json:"connectionStringFile"`
}

// startServe runs `dpsd serve` and waits for its "dpsd started" line.
func startServe(t *testing.T, bin, dataDir string) (*exec.Cmd, started, <-chan error) {
	t.Helper()
	cmd := exec.Command(bin, "serve", "-data-dir", dataDir, "-mqtt-addr", "127.0.0.1:0", "-mqtts-addr", "127.0.0.1:0", "-api-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "DPSD_LOG_FORMAT=json", "DPSD_CONFIG=")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	lines := make(chan started, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec struct {
				Msg string `json:"msg"`
				started
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "dpsd started" {
				lines <- rec.started
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	exited := make(chan error, 1)
	var st started
	select {
	case st = <-lines:
	case <-time.After(30 * time.Second):
		t.Fatal("dpsd serve did not start within 30 s")
	}
	go func() { exited <- cmd.Wait() }()
	return cmd, st, exited
}

// mqttsConnect performs a TLS handshake trusting caFile and a restricted
// CONNECT, and returns the CONNACK return code.
func mqttsConnect(t *testing.T, addr, caFile, scope, id, password string) byte {
	t.Helper()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	c := mqtttest.DialTLS(t, addr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	defer c.Close()
	code, _ := c.Connect(id, scope+"/registrations/"+id+"/api-version=2019-03-31", password, true, 30)
	return code
}

func TestServeSmoke(t *testing.T) {
	bin := buildDPSD(t)
	dataDir := filepath.Join(t.TempDir(), "data")

	cmd, st, exited := startServe(t, bin, dataDir)
	if !regexp.MustCompile(`^0ne[0-9A-F]{8}$`).MatchString(st.IDScope) {
		t.Fatalf("id scope %q", st.IDScope)
	}
	if st.CACert != filepath.Join(dataDir, datadir.CACertFile) {
		t.Fatalf("CA path %q", st.CACert)
	}
	if code := mqttsConnect(t, st.MQTTS, st.CACert, st.IDScope, "smoke-device", ""); code != 0 {
		t.Fatalf("restricted CONNACK %d", code)
	}
	// The service API works with the connection string the server wrote, and
	// a device enrolled through it authenticates over MQTT.
	key := enrollThroughAPI(t, st, "smoke-sym")
	sas := attest.SignSAS(key, attest.RegistrationResource(st.IDScope, "smoke-sym"), time.Now().Add(time.Hour), "registration")
	if code := mqttsConnect(t, st.MQTTS, st.CACert, st.IDScope, "smoke-sym", sas); code != 0 {
		t.Fatalf("SAS CONNACK %d", code)
	}
	bad := attest.SignSAS(make([]byte, 32), attest.RegistrationResource(st.IDScope, "smoke-sym"), time.Now().Add(time.Hour), "registration")
	if code := mqttsConnect(t, st.MQTTS, st.CACert, st.IDScope, "smoke-sym", bad); code != 5 {
		t.Fatalf("bad SAS CONNACK %d", code)
	}
	ca1, _ := os.ReadFile(st.CACert)
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit within 20 s of SIGTERM")
	}

	cmd, st2, exited := startServe(t, bin, dataDir)
	if st2.IDScope != st.IDScope {
		t.Fatalf("second start scope %q, first %q", st2.IDScope, st.IDScope)
	}
	ca2, _ := os.ReadFile(st2.CACert)
	if !bytes.Equal(ca1, ca2) {
		t.Fatal("second start replaced the CA")
	}
	if code := mqttsConnect(t, st2.MQTTS, st2.CACert, st2.IDScope, "smoke-sym", sas); code != 0 {
		t.Fatalf("SAS CONNACK after restart %d", code)
	}
	cmd.Process.Signal(syscall.SIGINT)
	if err := <-exited; err != nil {
		t.Fatalf("exit after SIGINT: %v", err)
	}
}

// enrollThroughAPI adds a symmetric key enrollment with the service API and
// returns its key.
func enrollThroughAPI(t *testing.T, st started, id string) []byte {
	t.Helper()
	cs, err := os.ReadFile(st.CSFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(st.CSFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("connection string file mode %v", fi.Mode().Perm())
	}
	caPEM, _ := os.ReadFile(st.CACert)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	c, err := apiclient.New(strings.TrimSpace(string(cs)), apiclient.Options{BaseURL: "https://" + st.API, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	_, err = c.PutEnrollment(context.Background(), &store.Enrollment{
		RegistrationID: id,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(key)}},
		},
	}, "")
	if err != nil {
		t.Fatalf("PutEnrollment through the API: %v", err)
	}
	return key
}

func TestServeHelpAndErrors(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"serve", "--help"}, &out, &errb); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, want := range []string{"Usage: dpsd serve", "-data-dir", "DPSD_DATA_DIR", "-mqtts-addr", "-hubs", "-log-format", "-config"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
	out.Reset()
	if code := run(context.Background(), []string{"serve", "-log-format", "xml"}, &out, &errb); code != 2 {
		t.Fatalf("bad flag exit %d", code)
	}
	if code := run(context.Background(), []string{"nope"}, &out, &errb); code != 2 {
		t.Fatalf("unknown command exit %d", code)
	}
	out.Reset()
	if code := run(context.Background(), []string{"help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "serve") {
		t.Fatalf("help: %d %q", code, out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "dpsd ") {
		t.Fatalf("version: %d %q", code, out.String())
	}
}

// TestServeInProcess runs serve in process until its context ends, with
// the plain listener only.
func TestServeInProcess(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "-data-dir", t.TempDir(), "-mqtt-addr", "127.0.0.1:0", "-mqtts-addr", "", "-api-addr", "127.0.0.1:0", "-log-format", "json"}, io.Discard, pw)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	found := false
	for sc.Scan() {
		if strings.Contains(sc.Text(), `"msg":"dpsd started"`) {
			found = strings.Contains(sc.Text(), `"mqtts":"off"`)
			cancel()
		}
	}
	if !found {
		t.Fatal("no start line with mqtts off")
	}
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
}
