package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/internal/testkit"
)

// e2eHub is the hub dpsd assigns devices to in these tests.
const e2eHub = "hub.e2e.localdomain"

// buildDpsd compiles cmd/dpsd into a temporary directory.
func buildDpsd(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dpsd")
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(goBin, "build", "-o", bin, "github.com/tpmdps/dpsd/cmd/dpsd")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building dpsd: %v\n%s", err, out)
	}
	return bin
}

// dpsdProc runs `dpsd serve` as a child process on fixed loopback ports and
// data directory, so that it can be killed and restarted in place. Its
// stderr (debug-level logs) of every run is kept in logs.
type dpsdProc struct {
	t        testing.TB
	bin, dir string
	mqtt     string
	api      string
	extra    []string
	logs     *testkit.LogBuffer

	cmd    *exec.Cmd
	exited chan struct{}
}

func newDpsd(t testing.TB, bin string, extra ...string) *dpsdProc {
	p := &dpsdProc{
		t: t, bin: bin, dir: filepath.Join(t.TempDir(), "data"),
		mqtt: testkit.FreeAddr(t), api: testkit.FreeAddr(t), extra: extra, logs: &testkit.LogBuffer{},
	}
	t.Cleanup(func() {
		if p.cmd != nil {
			p.kill()
		}
	})
	return p
}

// start runs dpsd and waits for its "dpsd started" log line.
func (p *dpsdProc) start() {
	p.t.Helper()
	args := append([]string{"serve",
		"-data-dir", p.dir,
		"-mqtt-addr", p.mqtt,
		"-mqtts-addr=",
		"-api-addr", p.api,
		"-hubs", e2eHub,
		"-retry-after", "0s",
		"-log-level", "debug",
	}, p.extra...)
	cmd := exec.Command(p.bin, args...)
	cmd.Env = append(os.Environ(), "DPSD_CONFIG=")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		p.t.Fatal(err)
	}
	cmd.Stdout = p.logs
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("starting dpsd: %v", err)
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	started := make(chan struct{})
	go func(exited chan struct{}) {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			p.logs.Write([]byte(line + "\n"))
			if strings.Contains(line, "dpsd started") {
				once.Do(func() { close(started) })
			}
		}
		_ = cmd.Wait()
		close(exited)
	}(p.exited)
	select {
	case <-started:
	case <-p.exited:
		p.cmd = nil
		p.t.Fatalf("dpsd exited at start:\n%s", tail(p.logs.String(), 3000))
	case <-time.After(30 * time.Second):
		p.t.Fatalf("dpsd did not start within 30 s:\n%s", tail(p.logs.String(), 3000))
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *dpsdProc) kill() { p.signal(syscall.SIGKILL) }

// stop sends SIGTERM (a clean shutdown) and waits.
func (p *dpsdProc) stop() { p.signal(syscall.SIGTERM) }

func (p *dpsdProc) signal(sig syscall.Signal) {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	p.cmd = nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// rootCAs trusts the development CA of the data directory.
func (p *dpsdProc) rootCAs() *x509.CertPool {
	p.t.Helper()
	pem, err := os.ReadFile(filepath.Join(p.dir, datadir.CACertFile))
	if err != nil {
		p.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		p.t.Fatal("no CA certificate in ca.pem")
	}
	return pool
}

// connectionString reads the service API connection string dpsd wrote.
func (p *dpsdProc) connectionString() string {
	p.t.Helper()
	cs, err := os.ReadFile(filepath.Join(p.dir, datadir.ConnectionStringFile))
	if err != nil {
		p.t.Fatal(err)
	}
	return strings.TrimSpace(string(cs))
}

// apiClient is a service API client for the running dpsd; rt, when set,
// wraps the HTTP transport (to observe requests).
func (p *dpsdProc) apiClient(wrap func(http.RoundTripper) http.RoundTripper) *apiclient.Client {
	p.t.Helper()
	var rt http.RoundTripper = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.rootCAs(), MinVersion: tls.VersionTLS12}}
	if wrap != nil {
		rt = wrap(rt)
	}
	c, err := apiclient.New(p.connectionString(), apiclient.Options{
		BaseURL:    "https://" + p.api,
		HTTPClient: &http.Client{Transport: rt, Timeout: 30 * time.Second},
	})
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}

// idScope reads the generated ID scope from the secrets file.
func (p *dpsdProc) idScope() string {
	p.t.Helper()
	d, err := datadir.Open(p.dir)
	if err != nil {
		p.t.Fatal(err)
	}
	return d.Secrets.IDScope
}

// deviceConfig is a device.Config over plain TCP to the child dpsd.
func (p *dpsdProc) deviceConfig(scope, id string, att device.Attestation) device.Config {
	host, port, _ := net.SplitHostPort(p.mqtt)
	n, _ := strconv.Atoi(port)
	return device.Config{
		Host: host, Port: n, Transport: device.TransportTCP, IDScope: scope,
		RegistrationID: id, Attestation: att, Timeout: 60 * time.Second, ConnectTimeout: 5 * time.Second,
		Backoff: device.Backoff{Initial: 100 * time.Millisecond, Max: time.Second, MaxAttempts: 20},
	}
}

// ctxTimeout is context.WithTimeout on Background, cancelled by t.Cleanup.
func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
