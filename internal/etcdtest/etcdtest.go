// Package etcdtest runs real etcd members for tests: embedded in the test
// process (go.etcd.io/etcd/server/v3/embed), one member or a cluster of
// several, or as child processes that a test can kill with SIGKILL (the
// test binary re-executed: see Child and RunChildIfAsked). Only tests
// import it, so etcd's server never enters a dpsd binary.
package etcdtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// readyTimeout bounds how long members take to elect a leader.
const readyTimeout = 60 * time.Second

// MemberConfig is what one member needs: its name, directory and URLs,
// and the whole cluster's peer URLs.
type MemberConfig struct {
	Name           string `json:"name"`
	Dir            string `json:"dir"`
	ClientURL      string `json:"clientUrl"`
	PeerURL        string `json:"peerUrl"`
	InitialCluster string `json:"initialCluster"`
}

// Member is a running embedded member.
type Member struct {
	MemberConfig
	e    *embed.Etcd
	stop func()
}

// Endpoint is the member's client address (host:port).
func (m *Member) Endpoint() string { return strings.TrimPrefix(m.ClientURL, "http://") }

// Stop stops the member (gracefully: leadership is handed over). A
// second Stop does nothing.
func (m *Member) Stop() { m.stop() }

// freePorts reserves n loopback ports by listening and closing (a port may
// be taken by someone else before etcd binds it; rare on loopback).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// Configs returns the configurations of an n-member cluster on loopback,
// each member with its own directory under dir.
func Configs(t testing.TB, dir string, n int) []MemberConfig {
	t.Helper()
	ports := freePorts(t, 2*n)
	cfgs := make([]MemberConfig, n)
	var peers []string
	for i := range n {
		cfgs[i] = MemberConfig{
			Name:      fmt.Sprintf("m%d", i),
			Dir:       filepath.Join(dir, fmt.Sprintf("m%d", i)),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
		}
		peers = append(peers, cfgs[i].Name+"="+cfgs[i].PeerURL)
	}
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(peers, ",")
	}
	return cfgs
}

// embedConfig is the etcd configuration of one member, silent.
func embedConfig(c MemberConfig) (*embed.Config, error) {
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.Dir
	cu, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, err
	}
	pu, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = c.InitialCluster
	cfg.InitialClusterToken = "dpsd-test"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.QuotaBackendBytes = 256 << 20
	return cfg, nil
}

// start starts one member without waiting for it to be ready.
func start(c MemberConfig) (*Member, error) {
	cfg, err := embedConfig(c)
	if err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdtest: start %s: %w", c.Name, err)
	}
	return &Member{MemberConfig: c, e: e, stop: sync.OnceFunc(e.Close)}, nil // Close twice panics
}

// wait waits until the member has joined a cluster with a leader.
func (m *Member) wait() error {
	select {
	case <-m.e.Server.ReadyNotify():
		return nil
	case err := <-m.e.Err():
		return fmt.Errorf("etcdtest: %s: %w", m.Name, err)
	case <-time.After(readyTimeout):
		return fmt.Errorf("etcdtest: %s not ready after %s", m.Name, readyTimeout)
	}
}

// Start runs a one-member etcd in t.TempDir(), stopped when t ends.
func Start(t testing.TB) *Member {
	t.Helper()
	return StartCluster(t, 1)[0]
}

// StartCluster runs an n-member etcd cluster in this process, every member
// started before any is awaited (readiness needs a leader), all stopped
// when t ends.
func StartCluster(t testing.TB, n int) []*Member {
	t.Helper()
	cfgs := Configs(t, t.TempDir(), n)
	ms := make([]*Member, n)
	for i, c := range cfgs {
		m, err := start(c)
		if err != nil {
			t.Fatal(err)
		}
		ms[i] = m
		t.Cleanup(m.Stop)
	}
	for _, m := range ms {
		if err := m.wait(); err != nil {
			t.Fatal(err)
		}
	}
	return ms
}

// Endpoints lists the members' client addresses.
func Endpoints(ms []*Member) []string {
	var eps []string
	for _, m := range ms {
		eps = append(eps, m.Endpoint())
	}
	return eps
}

// Client returns a client of endpoints, closed when t ends.
func Client(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// childEnv names the variable that makes a test binary run a member
// (RunChildIfAsked) instead of its tests.
const childEnv = "DPSD_ETCDTEST_MEMBER"

// RunChildIfAsked runs an etcd member and never returns when the process
// was started by Child; otherwise it returns at once. Call it first in the
// TestMain of a package that uses Child.
func RunChildIfAsked() {
	raw := os.Getenv(childEnv)
	if raw == "" {
		return
	}
	var c MemberConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		fmt.Fprintln(os.Stderr, "etcdtest child:", err)
		os.Exit(2)
	}
	m, err := start(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdtest child:", err)
		os.Exit(1)
	}
	select {
	case err := <-m.e.Err():
		fmt.Fprintln(os.Stderr, "etcdtest child:", err)
		os.Exit(1)
	case <-make(chan struct{}): // until killed
	}
}

// Process is a member running as a child process.
type Process struct {
	MemberConfig
	Cmd  *exec.Cmd
	done chan struct{}
}

// Endpoint is the member's client address (host:port).
func (p *Process) Endpoint() string { return strings.TrimPrefix(p.ClientURL, "http://") }

// Kill kills the member with SIGKILL and waits for it to exit.
func (p *Process) Kill() {
	_ = p.Cmd.Process.Kill()
	<-p.done
}

// Child starts the member c as a child process: the running test binary
// re-executed with the member's configuration in its environment (its
// TestMain must call RunChildIfAsked). It is killed when t ends.
func Child(t testing.TB, c MemberConfig) *Process {
	t.Helper()
	raw, _ := json.Marshal(c)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Process{MemberConfig: c, Cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(p.Kill)
	return p
}

// WaitHealthy waits until the cluster of endpoints answers a linearizable
// read (it has a leader and a quorum).
func WaitHealthy(t testing.TB, endpoints []string) {
	t.Helper()
	cli := Client(t, endpoints...)
	deadline := time.Now().Add(readyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Get(clientv3.WithRequireLeader(ctx), "health")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd %v not healthy: %v", endpoints, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
