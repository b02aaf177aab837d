package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestMain lets this test binary run an etcd member as a child (Child),
// and serve as the member runner of scripts/bench-cluster.sh.
func TestMain(m *testing.M) {
	RunChildIfAsked()
	m.Run()
}

// TestClusterSurvivesAKilledMember: three child-process members form a
// cluster; after one is killed with SIGKILL, writes through the others
// still succeed, and a write through the client of all three endpoints too.
func TestClusterSurvivesAKilledMember(t *testing.T) {
	cfgs := Configs(t, t.TempDir(), 3)
	var ps []*Process
	var eps []string
	for _, c := range cfgs {
		p := Child(t, c)
		ps = append(ps, p)
		eps = append(eps, p.Endpoint())
	}
	WaitHealthy(t, eps)
	cli := Client(t, eps...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "before"); err != nil {
		t.Fatal(err)
	}
	ps[0].Kill()
	WaitHealthy(t, eps[1:])
	if _, err := cli.Put(clientv3.WithRequireLeader(ctx), "k", "after"); err != nil {
		t.Fatalf("write after a member was killed: %v", err)
	}
	resp, err := Client(t, eps[2]).Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "after" {
		t.Fatalf("read: %v %v", resp, err)
	}
}
