package interop

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/dpsdtest"
)

const (
	// nodeDir holds package.json, package-lock.json and the scripts.
	nodeDir = "node"
	// stampFile (inside node_modules) records the SHA-256 of the lockfile
	// node_modules was installed from.
	stampFile = ".dpsd-lock-sha256"
	// npmTimeout bounds `npm ci`.
	npmTimeout = 5 * time.Minute
	// nodeTimeout bounds one node run (each script also stops itself at 15 s).
	nodeTimeout = 20 * time.Second
	// Fixed addresses of the SDKs' default ports.
	mqttsAddr = "127.0.0.1:8883"
	httpsAddr = "127.0.0.1:443"
	// sdkHost is the host name the SDKs connect to; the test server's
	// certificate names it.
	sdkHost = "localhost"
)

// nodeEnv runs the scripts of interop/node.
type nodeEnv struct {
	node   string // path of the node binary
	dir    string // absolute path of interop/node
	caFile string // PEM of the test server's CA, for NODE_EXTRA_CA_CERTS
}

// prepareNode finds node and npm, installs the locked SDKs when needed and
// returns an environment trusting caPEM. It fails the test (never skips) when
// a tool is missing.
func prepareNode(t *testing.T, caPEM []byte) *nodeEnv {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("interop: node not found in PATH (%v): install Node.js 20 or newer with npm, e.g. `apt-get install nodejs npm`", err)
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatalf("interop: npm not found in PATH (%v): install npm (Debian: `apt-get install npm`)", err)
	}
	dir, err := filepath.Abs(nodeDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := ensureModules(t, npm, dir); err != nil {
		t.Fatalf("interop: %v", err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return &nodeEnv{node: node, dir: dir, caFile: caFile}
}

// ensureModules runs `npm ci` in dir unless node_modules was installed from
// the current package-lock.json.
func ensureModules(t *testing.T, npm, dir string) error {
	lock, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		return fmt.Errorf("reading the lockfile: %w", err)
	}
	sum := sha256.Sum256(lock)
	want := hex.EncodeToString(sum[:])
	stamp := filepath.Join(dir, "node_modules", stampFile)
	if got, err := os.ReadFile(stamp); err == nil && strings.TrimSpace(string(got)) == want {
		return nil
	}
	t.Logf("interop: node_modules missing or stale: running npm ci in %s", dir)
	ctx, cancel := context.WithTimeout(context.Background(), npmTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("npm ci --no-audit --no-fund in %s: %w\n%s", dir, err, out)
	}
	if err := os.WriteFile(stamp, []byte(want+"\n"), 0o644); err != nil {
		return fmt.Errorf("writing the install stamp: %w", err)
	}
	return nil
}

// run runs a script with spec (marshalled to JSON) as its argument and
// decodes the last line of its output into out. Any failure to get that line
// fails the test, with node's stderr.
func (e *nodeEnv) run(t *testing.T, script string, spec, out any) {
	t.Helper()
	arg, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), nodeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.node, script, string(arg))
	cmd.Dir = e.dir
	cmd.Env = append(os.Environ(), "NODE_EXTRA_CA_CERTS="+e.caFile)
	if os.Getenv("DPSD_INTEROP_DEBUG") != "" {
		cmd.Env = append(cmd.Env, "DEBUG=azure-iot*")
	}
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("node %s did not finish within %v (hung on the server?)\nstdout:\n%s\nstderr:\n%s", script, nodeTimeout, stdout.Bytes(), stderr.Bytes())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	last := lines[len(lines)-1]
	if runErr != nil || last == "" {
		t.Fatalf("node %s: %v\nstdout:\n%s\nstderr:\n%s", script, runErr, stdout.Bytes(), stderr.Bytes())
	}
	if err := json.Unmarshal([]byte(last), out); err != nil {
		t.Fatalf("node %s printed no JSON result (%v)\nstdout:\n%s\nstderr:\n%s", script, err, stdout.Bytes(), stderr.Bytes())
	}
	if stderr.Len() > 0 {
		t.Cleanup(func() {
			if t.Failed() || testing.Verbose() {
				t.Logf("node %s stderr:\n%s", script, stderr.Bytes())
			}
		})
	}
}

// needPorts fails the test with a hint when one of addrs cannot be bound: the
// SDKs connect only to their fixed default ports.
func needPorts(t *testing.T, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("interop: the Node SDKs connect only to fixed ports, and %s cannot be bound: %v "+
				"(run as root or with CAP_NET_BIND_SERVICE, and stop whatever holds the port, e.g. a local dpsd)", a, err)
		}
		if err := ln.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// deviceSpec is the argument of register.js.
type deviceSpec struct {
	Transport      string `json:"transport"` // "mqtt" or "mqttws"
	Host           string `json:"host"`
	IDScope        string `json:"idScope"`
	RegistrationID string `json:"registrationId"`
	TimeoutMs      int    `json:"timeoutMs"`
	Payload        any    `json:"payload,omitempty"`
	SymmetricKey   string `json:"symmetricKey,omitempty"`
	GroupKey       string `json:"groupKey,omitempty"`
	CertFile       string `json:"certFile,omitempty"`
	KeyFile        string `json:"keyFile,omitempty"`
}

// deviceResult is what register.js prints.
type deviceResult struct {
	OK                bool              `json:"ok"`
	RegistrationState registrationState `json:"registrationState"`
	Error             *sdkError         `json:"error"`
}

// sdkError is an error the device SDK reported (or the script's own timeout).
type sdkError struct {
	Name    string          `json:"name"`
	Message string          `json:"message"`
	Code    json.RawMessage `json:"code"`   // e.g. the CONNACK return code
	Topic   string          `json:"topic"`  // response topic of a refused request
	Result  json.RawMessage `json:"result"` // response body of a refused request
}

// String describes the error for test logs.
func (e *sdkError) String() string {
	if e == nil {
		return "<no error>"
	}
	return fmt.Sprintf("%s: %s (code %s, topic %q, body %s)", e.Name, e.Message, e.Code, e.Topic, e.Result)
}

// registrationState is the part of the SDK's RegistrationResult the tests check.
type registrationState struct {
	RegistrationID string `json:"registrationId"`
	AssignedHub    string `json:"assignedHub"`
	DeviceID       string `json:"deviceId"`
	Status         string `json:"status"`
	Substatus      string `json:"substatus"`
	CreatedAt      string `json:"createdDateTimeUtc"`
	ETag           string `json:"etag"`
	SymmetricKey   *struct {
		EnrollmentGroupID string `json:"enrollmentGroupId"`
	} `json:"symmetricKey"`
	X509    json.RawMessage `json:"x509"`
	Payload json.RawMessage `json:"payload"`
}

// register runs register.js and returns its result.
func (e *nodeEnv) register(t *testing.T, spec deviceSpec) deviceResult {
	t.Helper()
	if spec.Host == "" {
		spec.Host = sdkHost
	}
	if spec.Transport == "" {
		spec.Transport = "mqtt"
	}
	if spec.TimeoutMs == 0 {
		spec.TimeoutMs = 15000
	}
	var res deviceResult
	e.run(t, "register.js", spec, &res)
	return res
}

// wantAssigned checks that a registration succeeded with the test hub.
func wantAssigned(t *testing.T, res deviceResult, regID string) {
	t.Helper()
	if !res.OK {
		t.Fatalf("%s: registration failed: %s", regID, res.Error)
	}
	st := res.RegistrationState
	if st.Status != "assigned" || st.AssignedHub != dpsdtest.DefaultHub || st.RegistrationID != regID || st.DeviceID == "" {
		t.Fatalf("%s: registrationState %+v, want assigned to %s", regID, st, dpsdtest.DefaultHub)
	}
	if _, err := time.Parse(time.RFC3339, st.CreatedAt); err != nil {
		t.Errorf("%s: createdDateTimeUtc %q: %v", regID, st.CreatedAt, err)
	}
}

// wantRefused checks that the SDK reported an error (and did not time out).
func wantRefused(t *testing.T, res deviceResult, regID string) {
	t.Helper()
	if res.OK {
		t.Fatalf("%s: registration with a wrong credential succeeded: %+v", regID, res.RegistrationState)
	}
	if res.Error == nil || res.Error.Name == "ScriptTimeout" || res.Error.Name == "ScriptError" {
		t.Fatalf("%s: want an SDK error, got %s", regID, res.Error)
	}
	t.Logf("%s: refused as expected: %s", regID, res.Error)
}
