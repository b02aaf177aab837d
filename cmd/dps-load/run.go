package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/cmd/dps-load/internal/loadgen"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/internal/procnet"
)

// Exit codes.
const (
	exitOK     = 0
	exitUsage  = 1
	exitFailed = 2
)

// errUsage marks command-line mistakes.
var errUsage = errors.New("usage")

// errSomeFailed: the run completed but some provisionings failed.
var errSomeFailed = errors.New("some provisionings failed")

const topHelp = `dps-load: load tool of dpsd.

  dps-load run          provision simulated devices and report (see run --help)
  dps-load idle         open idle connections and report server memory per connection
  dps-load bare-broker  run the baseline broker (same MQTT library, trivial replies)
`

// run is the whole command with its I/O injected, for in-process tests.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, topHelp)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(ctx, args[1:], stdout, stderr)
	case "idle":
		err = cmdIdle(ctx, args[1:], stdout, stderr)
	case "bare-broker":
		err = cmdBareBroker(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, topHelp)
		return exitOK
	default:
		fmt.Fprintf(stderr, "dps-load: unknown command %q\n\n%s", args[0], topHelp)
		return exitUsage
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errSomeFailed):
		fmt.Fprintln(stderr, "dps-load:", err)
		return exitFailed
	default:
		fmt.Fprintln(stderr, "dps-load:", err)
		return exitUsage
	}
}

// target is where the load goes and how devices are enrolled.
type target struct {
	addr, dataDir, connString, apiURL, caFile, idScope, serverName string
	tls                                                            bool
	serverPID                                                      int
	timeout                                                        time.Duration
}

func (t *target) flags(fs *flag.FlagSet) {
	fs.StringVar(&t.addr, "addr", "127.0.0.1:1883", "broker MQTT address host:port (the TLS port with --tls)")
	fs.BoolVar(&t.tls, "tls", false, "MQTT over TLS")
	fs.StringVar(&t.dataDir, "data-dir", defaultDataDir, "dpsd data directory: the service connection string, CA and ID scope that no flag gives are read from it (the default is ignored when it does not exist)")
	fs.StringVar(&t.connString, "connection-string", "", "service API connection string (default: from --data-dir; env DPSD_CONNECTION_STRING)")
	fs.StringVar(&t.apiURL, "api-url", "https://127.0.0.1:8443", "service API base URL")
	fs.StringVar(&t.caFile, "ca-file", "", "CA certificate PEM for TLS and the API (default: ca.pem of --data-dir)")
	fs.StringVar(&t.serverName, "server-name", "localhost", "TLS server name of the broker and the API")
	fs.StringVar(&t.idScope, "id-scope", "", "ID scope (default: from --data-dir)")
	fs.IntVar(&t.serverPID, "server-pid", 0, "dpsd process id for CPU and memory figures (default: the process listening on --addr's port; -1: none)")
	fs.DurationVar(&t.timeout, "timeout", loadgen.DefaultTimeout, "bound of each network step")
}

// defaultDataDir is dpsd serve's default data directory, relative to the
// working directory: dps-load run beside a dpsd started there needs no flags.
const defaultDataDir = "data"

// resolve fills what --data-dir provides and finds the server process.
func (t *target) resolve() (roots *x509.CertPool, err error) {
	if t.connString == "" {
		t.connString = os.Getenv("DPSD_CONNECTION_STRING")
	}
	if t.dataDir == defaultDataDir {
		if _, err := os.Stat(t.dataDir); err != nil {
			t.dataDir = "" // no dpsd data directory here: the flags must say it all
		}
	}
	if t.dataDir != "" {
		if t.connString == "" {
			b, err := os.ReadFile(filepath.Join(t.dataDir, datadir.ConnectionStringFile))
			if err != nil {
				return nil, fmt.Errorf("reading the service connection string: %w", err)
			}
			t.connString = strings.TrimSpace(string(b))
		}
		if t.caFile == "" {
			t.caFile = filepath.Join(t.dataDir, datadir.CACertFile)
		}
		if t.idScope == "" {
			b, err := os.ReadFile(filepath.Join(t.dataDir, datadir.SecretsFile))
			if err != nil {
				return nil, fmt.Errorf("reading the ID scope: %w", err)
			}
			var s struct {
				IDScope string `json:"idScope"`
			}
			if err := json.Unmarshal(b, &s); err != nil {
				return nil, fmt.Errorf("reading the ID scope from %s: %w", datadir.SecretsFile, err)
			}
			t.idScope = s.IDScope
		}
	}
	if t.caFile != "" {
		pem, err := os.ReadFile(t.caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: --ca-file %s holds no certificate", errUsage, t.caFile)
		}
	}
	if t.serverPID == 0 {
		_, port, err := net.SplitHostPort(t.addr)
		if err != nil {
			return nil, fmt.Errorf("%w: --addr %q: %w", errUsage, t.addr, err)
		}
		p, _ := strconv.Atoi(port)
		if t.serverPID, err = procnet.ListeningPID(p); err != nil {
			return nil, fmt.Errorf("%w (use --server-pid)", err)
		}
	}
	if t.serverPID < 0 {
		t.serverPID = 0
	}
	return roots, nil
}

// tlsConfig is the client TLS configuration (nil without --tls).
func (t *target) tlsConfig(roots *x509.CertPool) *tls.Config {
	if !t.tls {
		return nil
	}
	return &tls.Config{RootCAs: roots, ServerName: t.serverName, MinVersion: tls.VersionTLS12}
}

// apiClient returns a service API client.
func (t *target) apiClient(roots *x509.CertPool) (*apiclient.Client, error) {
	if t.connString == "" {
		return nil, fmt.Errorf("%w: a connection string is needed to enroll devices: run beside dpsd's data directory (./data, or --data-dir), or pass --connection-string", errUsage)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, ServerName: t.serverName, MinVersion: tls.VersionTLS12}
	return apiclient.New(t.connString, apiclient.Options{
		BaseURL:    t.apiURL,
		HTTPClient: &http.Client{Transport: tr, Timeout: 5 * time.Minute},
	})
}

// randomPrefix is a fresh registration id prefix, so runs do not collide.
func randomPrefix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return "load-" + hex.EncodeToString(b)
}

// summary is the --json output.
type summary struct {
	Machine  machine             `json:"machine"`
	Command  string              `json:"command"`
	Load     *loadgen.Report     `json:"load,omitempty"`
	Baseline *loadgen.Report     `json:"baseline,omitempty"`
	Idle     *loadgen.IdleReport `json:"idle,omitempty"`
	// CostRatio is the server's CPU per provisioning over the bare
	// broker's CPU per run of the same packets.
	CostRatio float64 `json:"costRatio,omitempty"`
}

// machine describes where the figures were taken.
type machine struct {
	CPUs    int    `json:"cpus"`
	Model   string `json:"model"`
	Go      string `json:"go"`
	LoadAvg string `json:"loadAvg"`
	Date    string `json:"date"`
}

func thisMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Date: time.Now().UTC().Format(time.RFC3339)}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.Model = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	return m
}

// runOpts are the flags of "run".
type runOpts struct {
	target
	rsa, ecc, sym, keyPool, count, concurrency int
	duration, ramp                             time.Duration
	rate                                       float64
	prefix                                     string
	verifyHubKey, baseline, jsonOut            bool
	baselineOnly, quiet, cleanup, csr          bool
	replySize                                  int
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o runOpts
	fs := flag.NewFlagSet("dps-load run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.target.flags(fs)
	fs.IntVar(&o.rsa, "tpm-rsa", 0, "TPM devices with RSA-2048 EK and SRK (software TPMs)")
	fs.IntVar(&o.ecc, "tpm-ecc", 0, "TPM devices with ECC P-256 EK and SRK (software TPMs)")
	fs.IntVar(&o.sym, "symmetric", 0, "symmetric key devices")
	fs.IntVar(&o.keyPool, "key-pool", 16, "distinct software TPMs per TPM kind, shared by the devices (0: one per device)")
	fs.BoolVar(&o.csr, "csr", false, "every device sends a certificate signing request (ECDSA P-256) and its enrollment has a credentialPolicyName: each provisioning is issued a certificate")
	fs.IntVar(&o.count, "count", 0, "provisionings to run (default: one per device unless --duration)")
	fs.DurationVar(&o.duration, "duration", 0, "run for this long (no new provisioning starts after it)")
	fs.IntVar(&o.concurrency, "concurrency", loadgen.DefaultConcurrency, "devices provisioning at once")
	fs.DurationVar(&o.ramp, "ramp", 0, "spread the start of the concurrent devices over this time")
	fs.Float64Var(&o.rate, "rate", 0, "open loop: start this many provisionings per second, --concurrency bounding those in flight (0: closed loop)")
	fs.StringVar(&o.prefix, "prefix", "", "registration id prefix (default: load-<random>)")
	fs.BoolVar(&o.verifyHubKey, "verify-hub-key", false, "TPM devices also open the final hub key blob (client CPU)")
	fs.BoolVar(&o.baseline, "baseline", false, "first run the same packets against a bare broker (a child process) for the broker floor")
	fs.BoolVar(&o.baselineOnly, "baseline-only", false, "run only the bare-broker baseline")
	fs.IntVar(&o.replySize, "reply-size", 0, "bare broker answer size in bytes (default: about a TPM challenge answer)")
	fs.BoolVar(&o.jsonOut, "json", false, "print the report as JSON")
	fs.BoolVar(&o.quiet, "quiet", false, "no live progress line")
	fs.BoolVar(&o.cleanup, "cleanup", false, "at the end, delete the enrollments this run created and their registration records")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if o.rsa+o.ecc+o.sym <= 0 {
		return fmt.Errorf("%w: no devices: set --tpm-rsa, --tpm-ecc and/or --symmetric", errUsage)
	}
	if o.prefix == "" {
		o.prefix = randomPrefix()
	}
	_, _ = loadgen.RaiseFileLimit() // best effort: many connections need many descriptors
	sum := &summary{Machine: thisMachine(), Command: "dps-load run " + strings.Join(args, " ")}
	var progress io.Writer
	if !o.quiet {
		progress = stderr
	}

	fmt.Fprintf(stderr, "generating %d devices (key pool %d)...\n", o.rsa+o.ecc+o.sym, o.keyPool)
	devices, err := loadgen.NewFleet(loadgen.FleetSpec{Prefix: o.prefix, TPMRSA: o.rsa, TPMECC: o.ecc, Symmetric: o.sym, KeyPool: o.keyPool, CSR: o.csr})
	if err != nil {
		return err
	}
	base := loadgen.Config{
		Devices: devices, Count: o.count, Duration: o.duration, Concurrency: o.concurrency,
		Ramp: o.ramp, Rate: o.rate, Timeout: o.timeout, VerifyHubKey: o.verifyHubKey, Progress: progress,
	}

	if o.baseline || o.baselineOnly {
		rep, err := runBaseline(ctx, base, o, stderr)
		if err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		sum.Baseline = rep
	}
	if !o.baselineOnly {
		roots, err := o.target.resolve()
		if err != nil {
			return err
		}
		// Keys are generated per run, so devices are always enrolled anew.
		c, err := o.target.apiClient(roots)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "enrolling %d devices through %s...\n", len(devices), o.apiURL)
		if o.cleanup {
			// Registered before Enroll: a partly enrolled batch is deleted too.
			defer cleanup(c, devices, stderr)
		}
		if err := loadgen.Enroll(ctx, c, devices); err != nil {
			return err
		}
		cfg := base
		cfg.Addr, cfg.TLS, cfg.IDScope, cfg.ServerPID = o.addr, o.target.tlsConfig(roots), o.idScope, o.serverPID
		rep, err := loadgen.Run(ctx, cfg)
		if err != nil {
			return err
		}
		sum.Load = rep
		if sum.Baseline != nil && sum.Baseline.Server != nil && rep.Server != nil && sum.Baseline.Server.PerProvisioningMs > 0 {
			sum.CostRatio = rep.Server.PerProvisioningMs / sum.Baseline.Server.PerProvisioningMs
		}
	}
	if o.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(sum); err != nil {
			return err
		}
	} else {
		printSummary(stdout, sum)
	}
	for _, r := range []*loadgen.Report{sum.Baseline, sum.Load} {
		if r != nil && r.Failed > 0 {
			return fmt.Errorf("%w: %d of %d (%s)", errSomeFailed, r.Failed, r.Attempted, r.FirstError)
		}
	}
	return nil
}

// cleanupTimeout bounds --cleanup, which runs even after an interrupt.
const cleanupTimeout = 5 * time.Minute

// cleanup deletes the run's enrollments and registration records (--cleanup)
// and says how many; it runs on a context of its own, so that a run ended
// by Ctrl-C still cleans up.
func cleanup(c *apiclient.Client, devices []*loadgen.Device, stderr io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	e, r, err := loadgen.Unenroll(ctx, c, devices)
	fmt.Fprintf(stderr, "cleanup: deleted %d enrollments and %d registration records\n", e, r)
	if err != nil {
		fmt.Fprintf(stderr, "cleanup: %v\n", err)
	}
}

// runBaseline starts a bare broker as a child process (so its CPU time is
// its own), runs the same packet script against it and stops it.
func runBaseline(ctx context.Context, base loadgen.Config, o runOpts, stderr io.Writer) (*loadgen.Report, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"bare-broker", "--tcp-addr", "127.0.0.1:0", "--tls-addr", "127.0.0.1:0"}
	if o.replySize > 0 {
		args = append(args, "--reply-size", strconv.Itoa(o.replySize))
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the bare broker: %w", err)
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("reading the bare broker's addresses: %w", err)
	}
	addrs := map[string]string{}
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok {
			addrs[k] = v
		}
	}
	cfg := base
	cfg.Baseline = true
	cfg.ServerPID = cmd.Process.Pid
	cfg.Addr = addrs["tcp"]
	if o.tls {
		cfg.Addr = addrs["tls"]
		// The bare broker's certificate is throwaway; the handshake costs
		// the same verified or not.
		cfg.TLS = &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // baseline only
	}
	fmt.Fprintf(stderr, "baseline: bare broker pid %d at %s\n", cmd.Process.Pid, cfg.Addr)
	return loadgen.Run(ctx, cfg)
}

func cmdIdle(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var t target
	var n, conc int
	var mode, prefix string
	var settle time.Duration
	var jsonOut bool
	fs := flag.NewFlagSet("dps-load idle", flag.ContinueOnError)
	fs.SetOutput(stderr)
	t.flags(fs)
	fs.IntVar(&n, "connections", 1000, "idle connections to open")
	fs.IntVar(&conc, "concurrency", 50, "connections being opened at once")
	fs.StringVar(&mode, "mode", "restricted", "restricted (TPM challenge sessions, no enrollment) or authenticated (symmetric devices, enrolled first)")
	fs.StringVar(&prefix, "prefix", "", "registration id prefix (default: load-<random>)")
	fs.DurationVar(&settle, "settle", 3*time.Second, "wait after the last connection before reading the server's memory")
	fs.BoolVar(&jsonOut, "json", false, "print the report as JSON")
	doCleanup := fs.Bool("cleanup", false, "authenticated mode: at the end, delete the enrollments this run created")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if mode != "restricted" && mode != "authenticated" {
		return fmt.Errorf("%w: --mode %q (want restricted or authenticated)", errUsage, mode)
	}
	if prefix == "" {
		prefix = randomPrefix()
	}
	if lim, err := loadgen.RaiseFileLimit(); err == nil && lim < uint64(n)+100 {
		fmt.Fprintf(stderr, "warning: open file limit %d is below %d connections\n", lim, n)
	}
	roots, err := t.resolve()
	if err != nil {
		return err
	}
	if t.serverPID == 0 {
		return fmt.Errorf("%w: idle needs the server process (--server-pid)", errUsage)
	}
	cfg := loadgen.IdleConfig{Addr: t.addr, TLS: t.tlsConfig(roots), IDScope: t.idScope, Prefix: prefix,
		Connections: n, Concurrency: conc, Settle: settle, Timeout: t.timeout, ServerPID: t.serverPID, Progress: stderr}
	if mode == "authenticated" {
		devices, err := loadgen.NewFleet(loadgen.FleetSpec{Prefix: prefix, Symmetric: n})
		if err != nil {
			return err
		}
		c, err := t.apiClient(roots)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "enrolling %d devices...\n", n)
		if *doCleanup {
			defer cleanup(c, devices, stderr)
		}
		if err := loadgen.Enroll(ctx, c, devices); err != nil {
			return err
		}
		cfg.Devices = devices
	}
	rep, err := loadgen.Idle(ctx, cfg)
	if err != nil {
		return err
	}
	sum := &summary{Machine: thisMachine(), Command: "dps-load idle " + strings.Join(args, " "), Idle: rep}
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(sum)
	}
	printMachine(stdout, sum)
	fmt.Fprintf(stdout, "idle %s connections to %s (%s): %d requested, %d opened, %d alive, %d failed in %.1f s\n",
		rep.Mode, rep.Addr, rep.Transport, rep.Requested, rep.Opened, rep.Alive, rep.Failed, rep.OpenMs/1000)
	fmt.Fprintf(stdout, "server RSS %d KiB -> %d KiB: %.1f KiB per idle connection\n", rep.RSSStartKiB, rep.RSSEndKiB, rep.PerConnectionKiB)
	if rep.FirstError != "" {
		fmt.Fprintf(stdout, "first error: %s\n", rep.FirstError)
	}
	return nil
}

// printMachine writes the machine line.
func printMachine(w io.Writer, s *summary) {
	m := s.Machine
	fmt.Fprintf(w, "machine: %d CPUs, %s, %s, load average %s, %s\n", m.CPUs, m.Model, m.Go, m.LoadAvg, m.Date)
	fmt.Fprintf(w, "command: %s\n", s.Command)
}

// printSummary writes the human-readable report.
func printSummary(w io.Writer, s *summary) {
	printMachine(w, s)
	for _, r := range []*loadgen.Report{s.Baseline, s.Load} {
		if r == nil {
			continue
		}
		fmt.Fprintf(w, "\n== %s %s (%s), devices %s, concurrency %d, rate %.0f/s (0: closed loop), ramp %.1f s\n",
			r.Target, r.Addr, r.Transport, r.Mix, r.Concurrency, r.Rate, r.RampMs/1000)
		fmt.Fprintf(w, "%d ok, %d failed, %d throttled (429) in %.2f s: %.1f/s (after ramp %.1f/s)\n",
			r.Succeeded, r.Failed, r.Throttled, r.ElapsedMs/1000, r.PerSecond, r.SteadyPerSecond)
		fmt.Fprintf(w, "%-10s %7s %9s %9s %9s %9s %9s\n", "phase", "count", "p50 ms", "p95 ms", "p99 ms", "max ms", "mean ms")
		for _, p := range loadgen.Phases() {
			l, ok := r.Phases[p]
			if !ok {
				continue
			}
			fmt.Fprintf(w, "%-10s %7d %9.2f %9.2f %9.2f %9.2f %9.2f\n", p, l.Count, l.P50, l.P95, l.P99, l.Max, l.Mean)
		}
		if r.Server != nil {
			fmt.Fprintf(w, "server CPU (pid %d): user %.0f ms + sys %.0f ms = %.3f ms per provisioning; RSS %d -> %d KiB\n",
				r.Server.PID, r.Server.UserMs, r.Server.SysMs, r.Server.PerProvisioningMs, r.Server.RSSStartKiB, r.Server.RSSEndKiB)
		}
		fmt.Fprintf(w, "client CPU (this process): %.0f ms\n", r.ClientCPUMs)
		if len(r.Errors) == 0 {
			fmt.Fprintln(w, "errors: none")
		} else {
			fmt.Fprintln(w, "errors:")
			for k, n := range r.Errors {
				fmt.Fprintf(w, "  %-30s %d\n", k, n)
			}
			fmt.Fprintf(w, "  first: %s\n", r.FirstError)
		}
	}
	if s.CostRatio > 0 {
		fmt.Fprintf(w, "\nserver CPU per provisioning is %.2fx the bare broker's for the same packets\n", s.CostRatio)
	}
}
