package hooks_test

import (
	"testing"
	"time"

	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/refusal"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
)

// TestAuthFailureBudget: after a burst of refused CONNECTs from one address,
// the next CONNECT from it, even with a valid credential, is refused
// (CONNACK 3, then closed) without reaching the service; another address
// still authenticates. The service calls are counted through the hook's
// Metrics: the hook observes phase "connect" around every call of
// provision.Service.Authenticate, and the service reports its refusals to
// its Observer.
func TestAuthFailureBudget(t *testing.T) {
	mx := &observer{}
	s := dpsdtest.Start(t, dpsdtest.Options{Metrics: mx, Observer: mx, HookLimits: hooks.Limits{
		AuthFailuresPerAddressPerMinute: 1, // the default burst of 20, then one a minute
	}})
	d := enrollSymmetric(t, s, "sym-budget")
	wrong := symDevice{id: d.id, key: make([]byte, 32)}
	serviceCalls := func() int { return mx.PhaseCount(hooks.PhaseConnect) }
	for i := 0; i < hooks.DefaultAuthFailureBurstPerAddress; i++ {
		c := mqtttest.DialFrom(t, "127.0.0.1", s.TCPAddr)
		if code, _ := c.Connect(d.id, username(s, d.id), wrong.sasAt(s), true, 0); code != 5 {
			t.Fatalf("bad token %d: CONNACK %d, want 5", i, code)
		}
	}
	calls := serviceCalls()
	failures := len(mx.ConnectRefusals()) + len(mx.AuthFailures())
	if calls != hooks.DefaultAuthFailureBurstPerAddress || failures != calls {
		t.Fatalf("%d service calls, %d refusals by the service; want %d of each", calls, failures, hooks.DefaultAuthFailureBurstPerAddress)
	}

	// The valid credential from the same address is refused before the service.
	c := mqtttest.DialFrom(t, "127.0.0.1", s.TCPAddr)
	if code, _ := c.Connect(d.id, username(s, d.id), d.sasAt(s), true, 0); code != 3 {
		t.Fatalf("valid token after the burst: CONNACK %d, want 3", code)
	}
	c.ExpectClosed()
	if n := serviceCalls(); n != calls {
		t.Fatalf("the refused CONNECT reached the service (%d calls, was %d)", n, calls)
	}
	if n := refusedFor(mx, refusal.AuthFailureBudget); n != 1 {
		t.Fatalf("%d refusals counted as %s, want 1", n, refusal.AuthFailureBudget)
	}

	// Another address has its own budget.
	o := mqtttest.DialFrom(t, "127.0.0.2", s.TCPAddr)
	if code, _ := o.Connect(d.id, username(s, d.id), d.sas(s, time.Now().Add(time.Hour)), true, 0); code != 0 {
		t.Fatalf("valid token from another address: CONNACK %d, want 0", code)
	}
	if n := mx.PhaseStatusCount(hooks.PhaseConnect, 0); n != 1 {
		t.Fatalf("%d accepted CONNECTs counted, want 1", n)
	}
}
