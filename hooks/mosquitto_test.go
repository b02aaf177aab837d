package hooks_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/store"
)

// The Mosquitto command-line clients (Debian package mosquitto-clients,
// installed by scripts/test.sh) against the in-process server over TLS: a
// third-party MQTT 3.1.1 stack with OpenSSL on the other end.
//
// Answers go only to the connection that asked (docs/protocol.md section 3), and
// two connections with the same client id take each other over, so a
// mosquitto_sub in the background cannot see the answer to a mosquitto_pub.
// mosquitto_rr does both on one connection; it refuses a wildcard response
// topic and subscribes to the exact topic it is given, which the broker
// allows (any filter within the response topics): TestMosquittoRR. And:
// mosquitto_sub checks CONNECT and the subscription to the response filter;
// mosquitto_pub -l -d publishes the register request, stays connected while
// its stdin is open, and its debug output names the topic of the answer it
// receives (202 with the request's $rid); the store then shows the
// registration that request made.

// mosquittoTool returns the path of a mosquitto client, failing the test
// (never skipping it) when the package is not installed.
func mosquittoTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found (%v): install the Debian package mosquitto-clients (apt-get install mosquitto-clients; scripts/test.sh does)", name, err)
	}
	return p
}

// mosq is how to reach the test server with the mosquitto clients.
type mosq struct {
	srv    *dpsdtest.Server
	port   string
	caFile string
	dir    string
}

func newMosq(t *testing.T) *mosq {
	t.Helper()
	for _, n := range []string{"mosquitto_pub", "mosquitto_sub"} {
		mosquittoTool(t, n)
	}
	srv := dpsdtest.Start(t, dpsdtest.Options{RetryAfter: -1})
	_, port, err := net.SplitHostPort(srv.TLSAddr)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, srv.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return &mosq{srv: srv, port: port, caFile: caFile, dir: dir}
}

// args are the connection arguments for regID: TLS to "localhost" (a name
// in the server certificate) trusting the test CA, MQTT 3.1.1, client id
// and username per docs/protocol.md section 2, then auth.
func (m *mosq) args(regID string, auth ...string) []string {
	a := []string{"-h", "localhost", "-p", m.port, "--cafile", m.caFile, "-V", "mqttv311",
		"-i", regID, "-u", username(m.srv, regID), "-q", "1"}
	return append(a, auth...)
}

// run runs a mosquitto client with a deadline and returns its exit error
// and combined output.
func run(t *testing.T, tool string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, mosquittoTool(t, tool), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s did not finish: %s", tool, out.String())
	}
	return out.String(), err
}

// subscribe runs mosquitto_sub on the response filter until its -W
// timeout: it must connect and have its subscription granted.
func (m *mosq) subscribe(t *testing.T, conn []string) {
	t.Helper()
	out, _ := run(t, "mosquitto_sub", append(append([]string(nil), conn...), "-t", hooks.ResponseFilter, "-C", "1", "-W", "1", "-d")...)
	if !strings.Contains(out, "received CONNACK (0)") || !strings.Contains(out, "received SUBACK") ||
		strings.Contains(strings.ToLower(out), "denied") || strings.Contains(strings.ToLower(out), "refused") {
		t.Fatalf("mosquitto_sub: %s", out)
	}
}

// register publishes a register request with mosquitto_pub and waits until
// it receives the answer, whose topic must be a 202 for $rid=1.
func (m *mosq) register(t *testing.T, regID string, conn []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// stdbuf (coreutils) makes mosquitto_pub's stdio line-buffered: its
	// debug lines must arrive while it runs, not when it exits.
	stdbuf, err := exec.LookPath("stdbuf")
	if err != nil {
		t.Fatalf("stdbuf not found (%v): install the Debian package coreutils", err)
	}
	args := append([]string{"-oL", mosquittoTool(t, "mosquitto_pub")}, conn...)
	args = append(args, "-t", registerTopic+"1", "-l", "-d")
	cmd := exec.CommandContext(ctx, stdbuf, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	if _, err := io.WriteString(stdin, `{"registrationId":"`+regID+`","payload":{"via":"mosquitto"}}`+"\n"); err != nil {
		t.Fatal(err)
	}
	var log []string
	answered := false
	for !answered {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("mosquitto_pub ended before an answer:\n%s", strings.Join(log, "\n"))
			}
			log = append(log, l)
			if strings.Contains(l, "received PUBLISH") && strings.Contains(l, "$dps/registrations/res/") {
				if !strings.Contains(l, "'$dps/registrations/res/202/?$rid=1") {
					t.Fatalf("answer is not a 202 for $rid=1: %s", l)
				}
				answered = true
			}
		case <-ctx.Done():
			t.Fatalf("no answer from the broker:\n%s", strings.Join(log, "\n"))
		}
	}
	stdin.Close() // end of input: mosquitto_pub disconnects and exits
	err = cmd.Wait()
	pw.Close()
	for l := range lines {
		log = append(log, l)
	}
	if err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, strings.Join(log, "\n"))
	}
	rec, err := m.srv.Store.GetRegistration(context.Background(), regID)
	if err != nil || rec.Status != store.RegistrationAssigned || rec.AssignedHub != dpsdtest.DefaultHub || !strings.Contains(string(rec.Payload), "mosquitto") {
		t.Fatalf("registration after mosquitto_pub: %+v, %v", rec, err)
	}
}

// expectRefused checks that a mosquitto client is refused at CONNECT with
// CONNACK 5 (its exit status) and says so.
func expectRefused(t *testing.T, tool string, args []string) {
	t.Helper()
	out, err := run(t, tool, args...)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 {
		// The mosquitto clients exit with the CONNACK return code: 5 is "not authorized".
		t.Fatalf("%s: %v, want exit status 5: %s", tool, err, out)
	}
	if !strings.Contains(strings.ToLower(out), "not authori") {
		t.Fatalf("%s: %v, output %q lacks the refusal", tool, err, out)
	}
}

func TestMosquittoSAS(t *testing.T) {
	m := newMosq(t)
	d := enrollSymmetric(t, m.srv, "mosq-sas")
	good := m.args(d.id, "-P", d.sasAt(m.srv))
	m.subscribe(t, good)
	m.register(t, d.id, good)

	// A token signed with another key is refused, by mosquitto_pub and mosquitto_sub.
	wrong := symDevice{id: d.id, key: bytes.Repeat([]byte{0x42}, 32)}
	bad := m.args(d.id, "-P", wrong.sasAt(m.srv))
	expectRefused(t, "mosquitto_pub", append(bad, "-t", registerTopic+"1", "-m", "{}"))
	expectRefused(t, "mosquitto_sub", append(bad, "-t", hooks.ResponseFilter, "-C", "1", "-W", "5"))
}

func TestMosquittoClientCertificate(t *testing.T) {
	m := newMosq(t)
	now := time.Now()
	root, err := devca.NewRootCA("mosquitto fleet", now, time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.srv.Store.PutGroup(context.Background(), &store.Group{EnrollmentGroupID: "mosq-fleet",
		EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
			SigningCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: string(root.CertPEM())}}}},
			ProvisioningStatus: store.StatusEnabled}}, ""); err != nil {
		t.Fatal(err)
	}
	writePair := func(name string, certPEM, keyPEM []byte) []string {
		c, k := filepath.Join(m.dir, name+".pem"), filepath.Join(m.dir, name+".key")
		if err := os.WriteFile(c, certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(k, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{"--cert", c, "--key", k}
	}
	certPEM, keyPEM, err := root.IssueClient("mosq-x509", now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	good := m.args("mosq-x509", writePair("good", certPEM, keyPEM)...)
	m.subscribe(t, good)
	m.register(t, "mosq-x509", good)

	// A certificate no enrollment knows is refused at CONNECT.
	ssPEM, ssKey, err := devca.SelfSignedClient("mosq-unknown", now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	unknown := m.args("mosq-unknown", writePair("unknown", ssPEM, ssKey)...)
	expectRefused(t, "mosquitto_pub", append(unknown, "-t", registerTopic+"1", "-m", "{}"))
	expectRefused(t, "mosquitto_sub", append(unknown, "-t", hooks.ResponseFilter, "-C", "1", "-W", "5"))
}

// TestMosquittoRR registers and polls with mosquitto_rr (MQTT 5, its
// default), each request on a connection of its own, the response topic
// given exactly as the answer will be written.
func TestMosquittoRR(t *testing.T) {
	m := newMosq(t)
	mosquittoTool(t, "mosquitto_rr")
	d := enrollSymmetric(t, m.srv, "mosq-rr")
	conn := []string{"-h", "localhost", "-p", m.port, "--cafile", m.caFile, "-i", d.id, "-u", username(m.srv, d.id), "-P", d.sasAt(m.srv), "-W", "10"}
	out, err := run(t, "mosquitto_rr", append(conn, "-t", registerTopic+"1", "-e", "$dps/registrations/res/202/?$rid=1",
		"-m", `{"registrationId":"mosq-rr"}`)...)
	if err != nil {
		t.Fatalf("mosquitto_rr register: %v: %s", err, out)
	}
	var op struct {
		OperationID string `json:"operationId"`
		Status      string `json:"status"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &op); err != nil || op.OperationID == "" {
		t.Fatalf("register answer %q: %v", out, err)
	}
	out, err = run(t, "mosquitto_rr", append(conn, "-t", pollTopic+"2&operationId="+op.OperationID,
		"-e", "$dps/registrations/res/200/?$rid=2", "-n")...)
	if err != nil || !strings.Contains(out, `"status":"assigned"`) || !strings.Contains(out, dpsdtest.DefaultHub) {
		t.Fatalf("mosquitto_rr poll: %v: %s", err, out)
	}
}
