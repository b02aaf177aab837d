package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/store/bolt"
)

// inProcess is `dpsd serve` running in this test process.
type inProcess struct {
	started
	dataDir string
	logs    *testkit.LogBuffer
	cancel  context.CancelFunc
	done    chan int
	hc      *http.Client // trusts the development CA
	pool    *x509.CertPool
}

// serveInProcess runs serve with the API on apiAddr and every other
// listener on a random loopback port, until the test ends.
func serveInProcess(t *testing.T, apiAddr string, extra ...string) *inProcess {
	t.Helper()
	p := &inProcess{dataDir: filepath.Join(t.TempDir(), "data"), logs: &testkit.LogBuffer{}, done: make(chan int, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	args := append([]string{"serve", "-data-dir", p.dataDir, "-mqtt-addr", "127.0.0.1:0", "-mqtts-addr", "127.0.0.1:0",
		"-api-addr", apiAddr, "-log-format", "json", "-hubs", "hub-a.test", "-retry-after", "0s"}, extra...)
	pr, pw := io.Pipe()
	go func() {
		p.done <- run(ctx, args, io.Discard, pw)
		pw.Close()
	}()
	lines := make(chan started, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.logs.Write(append(sc.Bytes(), '\n'))
			var rec struct {
				Msg string `json:"msg"`
				started
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "dpsd started" {
				lines <- rec.started
			}
		}
		io.Copy(io.Discard, pr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop within 30 s")
		}
	})
	select {
	case p.started = <-lines:
	case code := <-p.done:
		t.Fatalf("serve exited with %d:\n%s", code, p.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not start:\n%s", p.logs.String())
	}
	caPEM, err := os.ReadFile(p.CACert)
	if err != nil {
		t.Fatal(err)
	}
	p.pool = x509.NewCertPool()
	p.pool.AppendCertsFromPEM(caPEM)
	p.hc = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: p.pool, ServerName: "localhost"}}}
	return p
}

// stop ends serve and waits for it.
func (p *inProcess) stop(t *testing.T) {
	t.Helper()
	p.cancel()
	select {
	case code := <-p.done:
		p.done <- code // for the cleanup
		if code != 0 {
			t.Fatalf("serve exit %d", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
}

// get fetches path from the API listener.
func (p *inProcess) get(t *testing.T, path string) (int, string) {
	t.Helper()
	res, err := p.hc.Get("https://" + p.API + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// metric returns the value of the sample line starting with series (0 when absent).
func (p *inProcess) metric(t *testing.T, series string) float64 {
	t.Helper()
	code, body := p.get(t, metricsPath)
	if code != http.StatusOK {
		t.Fatalf("/metrics %d", code)
	}
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return v
		}
	}
	return 0
}

// provisionWSS provisions id with key over MQTT over WebSocket at port
// through the API listener.
func (p *inProcess) provisionWSS(t *testing.T, id string, key []byte, port int) (*device.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return device.Provision(ctx, device.Config{
		Host:           "localhost",
		Port:           port,
		Transport:      device.TransportWebSocket,
		RootCAs:        p.pool,
		IDScope:        p.IDScope,
		RegistrationID: id,
		Attestation:    &device.SymmetricKey{Key: key},
		PollInterval:   100 * time.Millisecond,
	})
}

func apiPort(t *testing.T, addr string) int {
	t.Helper()
	_, ps, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(ps)
	return n
}

// TestMetricsAfterProvisioning provisions a symmetric-key device over MQTT
// over WebSocket on the API listener (the device library's path
// /$iothub/websocket; a random port, since the interop tests hold 443) and
// checks that the metrics scraped over HTTPS moved and that the audit log
// has the registration.
func TestMetricsAfterProvisioning(t *testing.T) {
	p := serveInProcess(t, "127.0.0.1:0")
	port := apiPort(t, p.API)
	const assigned = `dpsd_registrations_total{attestation="symmetricKey",outcome="assigned"}`
	const registerCount = `dpsd_request_duration_seconds_count{phase="register"}`
	const recordCount = `dpsd_store_operation_duration_seconds_count{op="RecordRegistration"}`
	const badSig = `dpsd_auth_failures_total{reason="not_authorized"}`
	before := map[string]float64{}
	for _, s := range []string{assigned, registerCount, recordCount, badSig} {
		before[s] = p.metric(t, s)
	}

	key := enrollThroughAPI(t, p.started, "metrics-dev")
	res, err := p.provisionWSS(t, "metrics-dev", key, port)
	if err != nil {
		t.Fatalf("provision over WSS on the API listener: %v", err)
	}
	if res.Status != device.StatusAssigned || res.AssignedHub != "hub-a.test" {
		t.Fatalf("result %+v", res)
	}
	if _, err := p.provisionWSS(t, "metrics-dev", make([]byte, 32), port); err == nil {
		t.Fatal("a wrong key provisioned")
	}

	for s, delta := range map[string]float64{assigned: 1, registerCount: 1, recordCount: 1, badSig: 1} {
		if got := p.metric(t, s); got < before[s]+delta {
			t.Errorf("%s = %v, want at least %v", s, got, before[s]+delta)
		}
	}
	_, body := p.get(t, metricsPath)
	for _, want := range []string{`dpsd_mqtt_sessions{kind="restricted"}`, `dpsd_responses_total{code="202",phase="register"}`,
		`dpsd_request_duration_seconds_bucket{phase="api"`, `dpsd_tpm_challenges_issued_total`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The audit trail: the enrollment change (who: the policy) and the
	// registration (who: the device), never a key.
	logs := p.logs.String()
	if !regexp.MustCompile(`"msg":"registration",[^\n]*"audit":\{"who":"metrics-dev"[^}]*"action":"assigned","assignedHub":"hub-a.test"`).MatchString(logs) {
		t.Errorf("no registration audit line:\n%s", logs)
	}
	if !regexp.MustCompile(`"msg":"service api change",[^\n]*"audit":\{"who":"provisioningserviceowner","action":"create","kind":"enrollment","id":"metrics-dev"`).MatchString(logs) {
		t.Error("no enrollment audit line")
	}
	if strings.Contains(logs, "sig=") {
		t.Error("a SAS token reached the log")
	}
}

// TestWebSocketAtRootAndAPIStillServed: paho over wss at "/" on the API
// listener gets CONNACK 0 with a good SAS and a refusal with a bad one,
// while plain HTTPS requests on the same listener still reach the service
// API and the operational endpoints.
func TestWebSocketAtRootAndAPIStillServed(t *testing.T) {
	p := serveInProcess(t, "127.0.0.1:0")
	key := enrollThroughAPI(t, p.started, "root-path-dev")
	connect := func(path string, k []byte) error {
		sas := attest.SignSAS(k, attest.RegistrationResource(p.IDScope, "root-path-dev"), time.Now().Add(time.Hour), "registration")
		opts := paho.NewClientOptions().
			AddBroker("wss://" + p.API + path).
			SetClientID("root-path-dev").
			SetUsername(p.IDScope + "/registrations/root-path-dev/api-version=2019-03-31").
			SetPassword(sas).
			SetProtocolVersion(4).
			SetAutoReconnect(false).
			SetConnectRetry(false).
			SetConnectTimeout(10 * time.Second).
			SetTLSConfig(&tls.Config{RootCAs: p.pool, ServerName: "localhost"})
		c := paho.NewClient(opts)
		tok := c.Connect()
		if !tok.WaitTimeout(20 * time.Second) {
			return errors.New("connect timed out")
		}
		if err := tok.Error(); err != nil {
			return err
		}
		defer c.Disconnect(0)
		if !c.IsConnected() {
			return errors.New("not connected")
		}
		return nil
	}
	if err := connect("/", key); err != nil {
		t.Fatalf("wss at /: %v", err)
	}
	if err := connect("/$iothub/websocket", key); err != nil {
		t.Fatalf("wss at /$iothub/websocket: %v", err)
	}
	if err := connect("/", make([]byte, 32)); err == nil {
		t.Fatal("a bad SAS connected over wss")
	}
	// Plain HTTPS on the same listener: the DPS API (no token: 401 in the DPS shape), health, readiness.
	code, body := p.get(t, "/enrollments/root-path-dev?api-version=2021-10-01")
	if code != http.StatusUnauthorized || !strings.Contains(body, "errorCode") {
		t.Fatalf("API without a token: %d %s", code, body)
	}
	if code, body := p.get(t, "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz %d %q", code, body)
	}
	code, body = p.get(t, "/readyz")
	if code != 200 || !strings.Contains(body, `"store":"ok"`) || !strings.Contains(body, `"listeners":"ok"`) {
		t.Fatalf("readyz %d %s", code, body)
	}
	// An upgrade without the mqtt sub-protocol is refused by the MQTT side.
	req, _ := http.NewRequest(http.MethodGet, "https://"+p.API+"/", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	req.Header.Set("Sec-WebSocket-Protocol", "chat")
	res, err := p.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest {
		t.Fatalf("upgrade with sub-protocol chat: %d", res.StatusCode)
	}
}

// TestHealthAndBackupCommands runs `dpsd health` and `dpsd backup` against
// an in-process server, opens the backup with bolt.Open and finds the
// enrollment, then checks that health fails once the server is gone.
func TestHealthAndBackupCommands(t *testing.T) {
	p := serveInProcess(t, "127.0.0.1:0")
	ctx := context.Background()
	var out, errb bytes.Buffer
	if code := run(ctx, []string{"health", "--url", "https://" + p.API + "/readyz"}, &out, &errb); code != 0 {
		t.Fatalf("health (loopback, unverified): %d %s %s", code, out.String(), errb.String())
	}
	if !strings.HasPrefix(out.String(), "200 ") {
		t.Fatalf("health output %q", out.String())
	}
	if code := run(ctx, []string{"health", "--url", "https://localhost:" + strconv.Itoa(apiPort(t, p.API)) + "/healthz", "--ca-file", p.CACert}, &out, &errb); code != 0 {
		t.Fatalf("health with --ca-file: %d %s", code, errb.String())
	}

	enrollThroughAPI(t, p.started, "backup-dev")
	cs, err := os.ReadFile(p.CSFile)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dpsd-backup.db")
	common := []string{"--endpoint", "https://" + p.API, "--ca-file", p.CACert}
	out.Reset()
	errb.Reset()
	args := append([]string{"backup", "--connection-string", strings.TrimSpace(string(cs))}, common...)
	if code := run(ctx, append(args, file), &out, &errb); code != 0 {
		t.Fatalf("backup: %d %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "wrote ") {
		t.Fatalf("backup output %q", out.String())
	}
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", fi, err)
	}
	// A wrong key: refused, and no file is left behind.
	badCS := regexp.MustCompile(`SharedAccessKey=[^;]+`).ReplaceAllString(strings.TrimSpace(string(cs)), "SharedAccessKey="+strings.Repeat("A", 43)+"=")
	bad := filepath.Join(t.TempDir(), "bad.db")
	errb.Reset()
	if code := run(ctx, append(append([]string{"backup", "--connection-string", badCS}, common...), bad), &out, &errb); code != 1 || !strings.Contains(errb.String(), "401") {
		t.Fatalf("backup with a bad key: %d %s", code, errb.String())
	}
	if ents, _ := os.ReadDir(filepath.Dir(bad)); len(ents) != 0 {
		t.Fatalf("files left behind: %v", ents)
	}

	p.stop(t)
	// Restore: the copy opens with the data directory's key file and holds the enrollment.
	st, err := bolt.Open(file, bolt.Options{Timeout: time.Second, KeyFile: filepath.Join(p.dataDir, datadir.DBFile+".key")})
	if err != nil {
		t.Fatalf("open the backup: %v", err)
	}
	defer st.Close()
	e, err := st.GetEnrollment(ctx, "backup-dev")
	if err != nil || e.Attestation.SymmetricKey == nil || e.Attestation.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("enrollment in the backup: %+v %v", e, err)
	}
	if code := run(ctx, []string{"health", "--url", "https://" + p.API + "/readyz", "--timeout", "2s"}, &out, &errb); code != 1 {
		t.Fatalf("health of a stopped server: %d", code)
	}
}

func TestConfigPrint(t *testing.T) {
	file := filepath.Join(t.TempDir(), "dpsd.json")
	if err := os.WriteFile(file, []byte(`{"data-dir": "/srv/dpsd", "mqtts-addr": ":9883", "log-level": "debug"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DPSD_CONFIG": file, "DPSD_MQTTS_ADDR": ":10883", "DPSD_HUBS": "https://ops:hunter2@hub.example"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var out, errb bytes.Buffer
	if code := runConfigPrint([]string{"--json", "-log-level", "warn"}, lookup, &out, &errb); code != 0 {
		t.Fatalf("config print: %d %s", code, errb.String())
	}
	var vals []struct{ Name, Value, Source, Env string }
	if err := json.Unmarshal(out.Bytes(), &vals); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	got := map[string]string{}
	for _, v := range vals {
		got[v.Name] = v.Value + " from " + v.Source
	}
	for name, want := range map[string]string{
		"config":     file + " from env",
		"data-dir":   "/srv/dpsd from file",
		"mqtts-addr": ":10883 from env",
		"log-level":  "warn from flag",
		"api-addr":   ":8443 from default",
		"hubs":       "https://ops:xxxxx@hub.example from env",
	} {
		if got[name] != want {
			t.Errorf("%s: %q, want %q", name, got[name], want)
		}
	}
	if strings.Contains(out.String(), "hunter2") {
		t.Fatal("a password was printed")
	}
	out.Reset()
	if code := runConfigPrint(nil, lookup, &out, &errb); code != 0 || !strings.Contains(out.String(), "SETTING") || !strings.Contains(out.String(), "DPSD_MQTTS_ADDR") {
		t.Fatalf("table: %d %s", code, out.String())
	}
	if code := runConfigPrint([]string{"-log-format", "xml"}, lookup, &out, &errb); code != 2 {
		t.Fatalf("invalid setting exit %d", code)
	}
	if code := run(context.Background(), []string{"config"}, &out, &errb); code != 2 {
		t.Fatalf("config without print: %d", code)
	}
}
