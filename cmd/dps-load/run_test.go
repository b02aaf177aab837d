package main

import (
	"bytes"
	"context"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/cmd/dps-load/internal/barebroker"
	"github.com/tpmdps/dpsd/cmd/dps-load/internal/loadgen"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/issuer"
	"github.com/tpmdps/dpsd/store"
)

// startServer runs dpsd in process with its service API.
func startServer(t *testing.T) (*dpsdtest.Server, string) {
	t.Helper()
	s := dpsdtest.Start(t, dpsdtest.Options{APIAddr: "127.0.0.1:0", RetryAfter: -1})
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, s.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return s, ca
}

// checkReport asserts a well-formed report in which every provisioning succeeded.
func checkReport(t *testing.T, r *loadgen.Report, want int, phases ...string) {
	t.Helper()
	if r == nil {
		t.Fatal("no report")
	}
	if r.Attempted != want || r.Succeeded != want || r.Failed != 0 || len(r.Errors) != 0 {
		t.Fatalf("attempted %d, succeeded %d, failed %d (%v, %s); want %d successes",
			r.Attempted, r.Succeeded, r.Failed, r.Errors, r.FirstError, want)
	}
	if r.PerSecond <= 0 || r.ElapsedMs <= 0 {
		t.Errorf("rate %v/s over %v ms", r.PerSecond, r.ElapsedMs)
	}
	for _, p := range phases {
		l, ok := r.Phases[p]
		if !ok || l.Count == 0 {
			t.Errorf("phase %s missing from the report: %+v", p, r.Phases)
			continue
		}
		if l.P50 > l.P95 || l.P95 > l.P99 || l.P99 > l.Max || l.P50 < 0 {
			t.Errorf("phase %s: percentiles out of order: %+v", p, l)
		}
	}
	if r.Phases[loadgen.PhaseTotal].Count != want {
		t.Errorf("total latency has %d samples, want %d", r.Phases[loadgen.PhaseTotal].Count, want)
	}
}

// TestLoadSmoke runs the tool against an in-process dpsd: devices are
// enrolled through the service API, provisioned over plain TCP and over
// TLS (software TPMs with RSA and ECC keys, and symmetric keys), and the
// JSON report says they were all assigned.
func TestLoadSmoke(t *testing.T) {
	s, ca := startServer(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"tcp", []string{"--addr", s.TCPAddr}},
		{"tls", []string{"--addr", s.TLSAddr, "--tls"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"run",
				"--connection-string", s.ServiceConnectionString,
				"--api-url", "https://" + s.APIAddr,
				"--ca-file", ca,
				"--id-scope", s.IDScope,
				"--server-pid", strconv.Itoa(os.Getpid()),
				"--tpm-rsa", "3", "--tpm-ecc", "2", "--symmetric", "5", "--key-pool", "2",
				"--concurrency", "4", "--verify-hub-key", "--prefix", "smoke-" + tc.name,
				"--json", "--quiet", "--timeout", "20s",
			}, tc.args...)
			var out, errOut bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			if code := run(ctx, args, &out, &errOut); code != exitOK {
				t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errOut.String())
			}
			var sum summary
			if err := json.Unmarshal(out.Bytes(), &sum); err != nil {
				t.Fatalf("report is not JSON: %v\n%s", err, out.String())
			}
			checkReport(t, sum.Load, 10, loadgen.PhaseConnect, loadgen.PhaseChallenge, loadgen.PhaseActivate,
				loadgen.PhaseReconnect, loadgen.PhaseRegister, loadgen.PhasePoll, loadgen.PhaseFinish)
			if sum.Load.Transport != tc.name {
				t.Errorf("transport %q, want %q", sum.Load.Transport, tc.name)
			}
			if sum.Load.Mix != "tpm-rsa:3,tpm-ecc:2,symmetric:5" {
				t.Errorf("mix %q", sum.Load.Mix)
			}
			if sum.Load.Server == nil || sum.Load.Server.PID != os.Getpid() || sum.Load.Server.RSSEndKiB <= 0 {
				t.Errorf("server figures: %+v", sum.Load.Server)
			}
			if sum.Machine.CPUs <= 0 || sum.Machine.Go == "" {
				t.Errorf("machine: %+v", sum.Machine)
			}
			// The service really assigned them.
			for _, id := range []string{"smoke-" + tc.name + "-tpm-rsa-2", "smoke-" + tc.name + "-tpm-ecc-1", "smoke-" + tc.name + "-symmetric-4"} {
				reg, err := s.Store.GetRegistration(ctx, id)
				if err != nil {
					t.Fatalf("registration %s: %v", id, err)
				}
				if reg.Status != store.RegistrationAssigned {
					t.Errorf("registration %s: status %q", id, reg.Status)
				}
			}
		})
	}
}

// TestLoadTextReport checks the human-readable summary table.
func TestLoadTextReport(t *testing.T) {
	s, ca := startServer(t)
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"run", "--addr", s.TCPAddr,
		"--connection-string", s.ServiceConnectionString, "--api-url", "https://" + s.APIAddr, "--ca-file", ca,
		"--id-scope", s.IDScope, "--server-pid", "-1", "--tpm-ecc", "2", "--symmetric", "2", "--quiet", "--rate", "100"}, &out, &errOut)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"machine:", "rate 100/s", "4 ok, 0 failed", "phase", "challenge", "poll", "total", "errors: none"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}

// TestBaselineAgainstBareBroker runs the bare-broker packet script in
// process: every round trip is answered, for TPM and symmetric devices.
func TestBaselineAgainstBareBroker(t *testing.T) {
	ctx := context.Background()
	b, err := barebroker.Start(ctx, barebroker.Config{TCPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	devices, err := loadgen.NewFleet(loadgen.FleetSpec{Prefix: "base", TPMECC: 3, Symmetric: 3})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := loadgen.Run(ctx, loadgen.Config{Addr: b.TCPAddr().String(), Devices: devices, Baseline: true,
		Concurrency: 3, Count: 12, ServerPID: os.Getpid(), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, rep, 12, loadgen.PhaseConnect, loadgen.PhaseChallenge, loadgen.PhaseReconnect, loadgen.PhaseRegister, loadgen.PhasePoll)
	if rep.Target != "bare-broker" {
		t.Errorf("target %q", rep.Target)
	}
}

// TestIdleConnections opens restricted sessions and reads the server's memory.
func TestIdleConnections(t *testing.T) {
	s, _ := startServer(t)
	rep, err := loadgen.Idle(context.Background(), loadgen.IdleConfig{Addr: s.TCPAddr, IDScope: s.IDScope,
		Connections: 20, Concurrency: 5, Settle: 10 * time.Millisecond, ServerPID: os.Getpid(), Prefix: "idle"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Opened != 20 || rep.Alive != 20 || rep.Failed != 0 || rep.RSSEndKiB <= 0 {
		t.Fatalf("idle report: %+v", rep)
	}
}

// TestUsageErrors checks that bad invocations exit 1 with a message.
func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"nope"},
		{"run", "--server-pid", "-1"}, // no devices
		{"run", "--server-pid", "-1", "--symmetric", "1", "extra"}, // stray argument
		{"idle", "--server-pid", "-1", "--mode", "weird"},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code != exitUsage || errOut.Len() == 0 {
			t.Errorf("%q: exit %d, stderr %q", args, code, errOut.String())
		}
	}
}

// TestLoadDefaultDataDirAndCleanup: run beside dpsd's data directory
// (./data), dps-load needs no connection string, CA or ID scope; --cleanup
// leaves none of the run's enrollments or registration records behind.
func TestLoadDefaultDataDirAndCleanup(t *testing.T) {
	s, _ := startServer(t)
	work := t.TempDir()
	data := filepath.Join(work, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		datadir.ConnectionStringFile: s.ServiceConnectionString + "\n",
		datadir.CACertFile:           string(s.CACertPEM),
		datadir.SecretsFile:          `{"idScope": "` + s.IDScope + `"}`,
	} {
		if err := os.WriteFile(filepath.Join(data, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(work)
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	code := run(ctx, []string{"run", "--addr", s.TLSAddr, "--tls", "--api-url", "https://" + s.APIAddr, "--server-pid", "-1",
		"--tpm-ecc", "2", "--symmetric", "3", "--prefix", "clean", "--quiet", "--json", "--cleanup"}, &out, &errOut)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errOut.String())
	}
	var sum summary
	if err := json.Unmarshal(out.Bytes(), &sum); err != nil {
		t.Fatalf("report: %v\n%s", err, out.String())
	}
	checkReport(t, sum.Load, 5)
	if !strings.Contains(errOut.String(), "cleanup: deleted 5 enrollments and 5 registration records") {
		t.Errorf("stderr lacks the cleanup line:\n%s", errOut.String())
	}
	for _, id := range []string{"clean-tpm-ecc-0", "clean-tpm-ecc-1", "clean-symmetric-0", "clean-symmetric-2"} {
		if _, err := s.Store.GetEnrollment(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("enrollment %s after --cleanup: %v", id, err)
		}
		if _, err := s.Store.GetRegistration(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("registration %s after --cleanup: %v", id, err)
		}
	}
}

// TestLoadCSR: with --csr every device asks for a certificate and the
// report counts only provisionings that got one; the service recorded them.
func TestLoadCSR(t *testing.T) {
	ca, err := issuer.NewCA(issuer.KeyECDSAP256, pkix.Name{CommonName: "load issuing CA"}, time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s := dpsdtest.Start(t, dpsdtest.Options{APIAddr: "127.0.0.1:0", RetryAfter: -1, Issuer: ca})
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, s.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"run", "--connection-string", s.ServiceConnectionString, "--api-url", "https://" + s.APIAddr,
		"--ca-file", caFile, "--id-scope", s.IDScope, "--addr", s.TCPAddr, "--server-pid", strconv.Itoa(os.Getpid()),
		"--tpm-ecc", "2", "--symmetric", "2", "--key-pool", "1", "--csr", "--prefix", "csr", "--json", "--quiet", "--timeout", "20s"}
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if code := run(ctx, args, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errOut.String())
	}
	var sum summary
	if err := json.Unmarshal(out.Bytes(), &sum); err != nil {
		t.Fatal(err)
	}
	checkReport(t, sum.Load, 4, loadgen.PhaseRegister, loadgen.PhasePoll)
	for _, id := range []string{"csr-tpm-ecc-1", "csr-symmetric-0"} {
		reg, err := s.Store.GetRegistration(ctx, id)
		if err != nil || reg.Certificate == nil || reg.Certificate.SubjectName != "CN="+id {
			t.Fatalf("registration %s: %+v, %v", id, reg, err)
		}
	}
}
