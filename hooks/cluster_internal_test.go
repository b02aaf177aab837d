package hooks

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/etcdtest"
	"github.com/tpmdps/dpsd/provision"
	etcdstore "github.com/tpmdps/dpsd/store/etcd"
)

// TestClusterLimitsHoldAcrossNodes: two nodes (hooks) on one etcd store
// share a device's poll and register budgets and the challenges in total:
// requests spread over both are counted once, the one over the budget
// gets a retry-after up to the window's end, another device is not
// affected, and a store that cannot count refuses instead of letting the
// limit lapse.
func TestClusterLimitsHoldAcrossNodes(t *testing.T) {
	m := etcdtest.Start(t)
	fixed := time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC) // one window for every count
	now := func() time.Time { return fixed }
	node := func() *Hook {
		st, err := etcdstore.Open(context.Background(), etcdstore.Options{Endpoints: []string{m.Endpoint()}, Prefix: "/limits/",
			Key: bytes.Repeat([]byte{1}, 32), RequestTimeout: time.Second, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		lim := Limits{ChallengesPerMinute: 4}.withDefaults()
		return &Hook{limits: lim, cluster: st, now: now, ctx: context.Background()}
	}
	a, b := node(), node()
	dev := &session{id: provision.Identity{RegistrationID: "dev-1", Method: provision.AuthSymmetricKey}}
	other := &session{id: provision.Identity{RegistrationID: "dev-2", Method: provision.AuthSymmetricKey}}
	restricted := &session{id: provision.Identity{RegistrationID: "tpm-1", Method: provision.AuthRestricted}}
	poll := request{topic: RequestTopic{Kind: KindPoll}}
	register := request{topic: RequestTopic{Kind: KindRegister}}
	check := func(what string, h *Hook, s *session, req request, wantThrottled bool) {
		t.Helper()
		wait, unavailable := h.clusterThrottle(s, req)
		if unavailable || (wait > 0) != wantThrottled {
			t.Fatalf("%s: wait %v unavailable %v, want throttled %v", what, wait, unavailable, wantThrottled)
		}
		if wait > DefaultPollWindow && req.topic.Kind == KindPoll {
			t.Fatalf("%s: retry-after %v beyond the poll window", what, wait)
		}
	}
	for i := range DefaultPollsPerDevice {
		check("poll", []*Hook{a, b}[i%2], dev, poll, false)
	}
	check("the poll over the budget, on either node", a, dev, poll, true)
	check("the poll over the budget, on the other node", b, dev, poll, true)
	check("another device's poll", b, other, poll, false)
	for i := range DefaultRegistersPerDevice {
		check("register", []*Hook{a, b}[i%2], dev, register, false)
	}
	check("the register over the budget", b, dev, register, true)
	// Challenges in total: 4 per minute across both nodes.
	throttled := 0
	for i := range 6 {
		if wait, _ := []*Hook{a, b}[i%2].clusterThrottle(restricted, register); wait > 0 {
			throttled++
		}
	}
	if throttled != 2 {
		t.Fatalf("6 challenges against a cluster budget of 4 per minute: %d throttled, want 2", throttled)
	}
	m.Stop()
	if _, unavailable := a.clusterThrottle(dev, poll); !unavailable {
		t.Fatal("with the store gone the count was skipped")
	}
}
