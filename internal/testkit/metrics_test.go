package testkit

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestMetricsRecords: every call is kept, in order, and counted under its
// labels; concurrent calls lose nothing.
func TestMetricsRecords(t *testing.T) {
	var m Metrics
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() { m.Observe("connect", 0, time.Millisecond) })
	}
	wg.Wait()
	m.Observe("connect", 5, 0)
	m.Observe("register", 202, 0)
	m.ConnectRefused("a")
	m.ConnectRefused("b")
	m.AuthFailed(context.Background(), "not_authorized")
	m.ChallengeIssued(context.Background(), "dev")
	m.ConnectionRefused("tcp", "cap")
	m.ConnectionRefused("tcp", "cap")
	m.ConnectionRefused("tls", "rate")

	if n := m.PhaseCount("connect"); n != 51 {
		t.Errorf("PhaseCount(connect) = %d, want 51", n)
	}
	if n := m.PhaseStatusCount("connect", 0); n != 50 {
		t.Errorf("PhaseStatusCount(connect, 0) = %d, want 50", n)
	}
	if n := m.PhaseCount("conn"); n != 0 {
		t.Errorf("PhaseCount(conn) = %d: a prefix of a phase is not the phase", n)
	}
	if p := m.Phases(); len(p) != 52 || p[51] != "register/202" {
		t.Errorf("Phases ends %v", p[len(p)-2:])
	}
	if r := m.ConnectRefusals(); !slices.Equal(r, []string{"a", "b"}) {
		t.Errorf("ConnectRefusals %v", r)
	}
	if r := m.AuthFailures(); !slices.Equal(r, []string{"not_authorized"}) {
		t.Errorf("AuthFailures %v", r)
	}
	if m.Challenges() != 1 {
		t.Errorf("Challenges %d", m.Challenges())
	}
	got := m.ConnectionsRefused()
	if got["tcp/cap"] != 2 || got["tls/rate"] != 1 || len(got) != 2 {
		t.Errorf("ConnectionsRefused %v", got)
	}
	got["tcp/cap"] = 99 // a copy
	if m.ConnectionsRefused()["tcp/cap"] != 2 {
		t.Error("ConnectionsRefused returned the recorder's own map")
	}
}
