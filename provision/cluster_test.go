package provision

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/internal/etcdtest"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/store"
	etcdstore "github.com/tpmdps/dpsd/store/etcd"
)

// clusterNodes returns n services sharing one etcd store (a store object
// each, as separate processes would have) and the same secrets.
func clusterNodes(t *testing.T, n int) []*env {
	t.Helper()
	m := etcdtest.Start(t)
	var nodes []*env
	for range n {
		st, err := etcdstore.Open(context.Background(), etcdstore.Options{Endpoints: []string{m.Endpoint()}, Prefix: "/cluster/",
			Key: bytes.Repeat([]byte{3}, 32)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		e := newEnv(t, func(c *Config) { c.Store = st })
		nodes = append(nodes, e)
	}
	return nodes
}

// TestClusterChallengeAnyNodeOnce: in a cluster (a store that records
// challenges) a challenge issued by one node authenticates on another,
// exactly once across all nodes, also when many replay it at once, and a
// restarted node (a new run) still accepts an unused, unexpired one.
func TestClusterChallengeAnyNodeOnce(t *testing.T) {
	nodes := clusterNodes(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	d := newTPMDevice(t, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	if _, err := a.svc.cfg.Store.PutEnrollment(context.Background(), tpmEnrollment(regID, d.ekPublic()), ""); err != nil {
		t.Fatal(err)
	}
	if a.svc.challenges == nil || a.svc.usedRefs != nil {
		t.Fatal("a service on the etcd store keeps used challenges in memory")
	}

	// Issued by a, answered on b.
	_, token := a.challengeToken(d, regID)
	id := b.mustConnect(regID, token)
	if id.Method != AuthTPM {
		t.Fatalf("identity %+v", id)
	}
	for _, n := range nodes {
		if _, err := n.connect(regID, token); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "already used") {
			t.Fatalf("replay: %v", err)
		}
	}
	// The device registers on c, polls on a.
	opID := c.register(id, RegisterRequest{TPM: d.keys()})
	if got := a.pollFinal(id, opID); got.Status != "assigned" {
		t.Fatalf("final %s", encode(t, got))
	}

	// Many concurrent replays of a fresh challenge on all nodes: one wins.
	_, token = b.challengeToken(d, regID)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := range 12 {
		wg.Go(func() {
			if _, err := nodes[i%3].connect(regID, token); err == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("%d of 12 concurrent uses on 3 nodes authenticated, want 1", ok)
	}

	// A rolling restart: a new run of a accepts b's unused challenge.
	_, token = b.challengeToken(d, regID)
	restarted, err := New(a.svc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if restarted.run == a.svc.run {
		t.Fatal("same run id")
	}
	a.svc = restarted
	if _, err := a.connect(regID, token); err != nil {
		t.Fatalf("a still valid challenge after a restart: %v", err)
	}
	// An expired one is refused everywhere.
	_, token = a.challengeToken(d, regID)
	for _, n := range nodes {
		n.clock.Advance(DefaultChallengeLifetime + time.Second)
	}
	if _, err := b.connect(regID, token); !errors.Is(err, ErrNotAuthorized) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired challenge: %v", err)
	}
}

// TestClusterStoreUnavailable: when the shared store cannot answer, a TPM
// CONNECT is refused as unavailable (CONNACK 3, the device retries) and a
// register is answered 503, never as if the device were unknown.
func TestClusterStoreUnavailable(t *testing.T) {
	m := etcdtest.Start(t)
	st, err := etcdstore.Open(context.Background(), etcdstore.Options{Endpoints: []string{m.Endpoint()}, Prefix: "/gone/",
		Key: bytes.Repeat([]byte{3}, 32), RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	e := newEnv(t, func(c *Config) { c.Store = st })
	key := symKey(1)
	if _, err := st.PutEnrollment(context.Background(), symmetricEnrollment("dev-1", key, nil), ""); err != nil {
		t.Fatal(err)
	}
	id := e.mustConnect("dev-1", e.sas("dev-1", key, ""))
	m.Stop()
	if _, err := e.connect("dev-1", e.sas("dev-1", key, "")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("connect with the store gone: %v, want ErrUnavailable", err)
	}
	resp := e.svc.Register(e.ctx, id, RegisterRequest{}, "tr")
	if resp.Status != 503 || errorBody(t, resp, ErrorCodeUnavailable) == nil || resp.RetryAfter < time.Second {
		t.Fatalf("register with the store gone: %d %s", resp.Status, encode(t, resp.Body))
	}
}

// TestHandoffClusterLeaseTakeover: two nodes share an etcd store. Node a's
// worker stalls while the hub holds its create; once the job's lease has
// expired (by the store's clock) node b takes the job, registers the device
// (create-or-update: still one identity) and records it; a's late outcome
// is refused and writes nothing.
func TestHandoffClusterLeaseTakeover(t *testing.T) {
	m := etcdtest.Start(t)
	logs := &syncBuffer{}
	openStore := func(now func() time.Time) *etcdstore.Store {
		st, err := etcdstore.Open(context.Background(), etcdstore.Options{Endpoints: []string{m.Endpoint()}, Prefix: "/handoff/",
			Key: bytes.Repeat([]byte{3}, 32), Now: now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st
	}
	var stA *etcdstore.Store
	e := newHubEnv(t, 1, func(c *Config) {
		stA = openStore(c.Now)
		c.Store = stA
		c.Handoff.Lease = 10 * time.Second
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	hub := e.hubs[0]
	if _, err := stA.PutLinkedHub(e.ctx, &store.LinkedHub{Name: hub.HostName, ConnectionString: hub.ConnectionString}, ""); err != nil {
		t.Fatal(err)
	}
	en := symmetricEnrollment("dev-1", symKey(1), nil)
	en.IoTHubHostName = hub.HostName
	if _, err := stA.PutEnrollment(e.ctx, en, ""); err != nil {
		t.Fatal(err)
	}
	cfgB := e.svc.cfg
	cfgB.Store = openStore(e.clock.Now)
	b, err := New(cfgB)
	if err != nil {
		t.Fatal(err)
	}
	created, release := hub.HoldCreates()
	defer release()
	id := e.mustConnect("dev-1", e.sas("dev-1", symKey(1), ""))
	opID := e.register(id, RegisterRequest{})
	<-created // node a's worker waits for the hub's answer
	e.clock.Advance(11 * time.Second)
	bctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.Run(bctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	got := e.awaitFinal(id, opID, 0)
	if got.Status != "assigned" || got.RegistrationState.AssignedHub != hub.HostName || hub.Creates("dev-1") != 1 {
		t.Fatalf("%s, created %d", encode(t, got), hub.Creates("dev-1"))
	}
	rec, err := stA.GetRegistration(e.ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	release() // node a's worker hears the hub and tries to finish
	testkit.Await(t, "node a's outcome to be refused", func() bool {
		return strings.Contains(logs.String(), "taken over by another worker")
	})
	after, err := stA.GetRegistration(e.ctx, "dev-1")
	if err != nil || after.ETag != rec.ETag || hub.Creates("dev-1") != 1 {
		t.Fatalf("node a wrote: etag %s -> %s (%v), created %d", rec.ETag, after.ETag, err, hub.Creates("dev-1"))
	}
	if n, err := stA.CountJobs(e.ctx); err != nil || n != 0 {
		t.Fatalf("%d jobs left (%v)", n, err)
	}
}
