package refusal

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/testkit"
)

type counts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counts) ConnectionRefused(listener, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[listener+"/"+reason]++
}

// warnings decodes the JSON log lines.
func warnings(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// TestReporterCountsAllLogsOncePerAddress: every refusal is counted by
// listener and reason; one warning per address per interval names it, the
// next one says how many went unlogged.
func TestReporterCountsAllLogsOncePerAddress(t *testing.T) {
	var buf bytes.Buffer
	c := &counts{n: map[string]int{}}
	clk := testkit.NewClock(time.Unix(1000, 0))
	r := New(slog.New(slog.NewJSONHandler(&buf, nil)), c, clk.Now)
	for i := 0; i < 5; i++ {
		r.Refused("tls", AddressCap, "192.0.2.1")
	}
	r.Refused("tcp", AddressRate, "192.0.2.1")
	r.Refused("tls", AddressRate, "2001:db8::/64")
	if c.n["tls/"+AddressCap] != 5 || c.n["tcp/"+AddressRate] != 1 || c.n["tls/"+AddressRate] != 1 {
		t.Fatalf("counts %v", c.n)
	}
	w := warnings(t, &buf)
	if len(w) != 2 || w[0]["address"] != "192.0.2.1" || w[0]["level"] != "WARN" || w[0]["reason"] != AddressCap ||
		w[1]["address"] != "2001:db8::/64" {
		t.Fatalf("warnings %v", w)
	}
	buf.Reset()
	clk.Advance(LogInterval)
	r.Refused("tls", AddressCap, "192.0.2.1")
	if w := warnings(t, &buf); len(w) != 1 || w[0]["unloggedSinceLast"] != float64(5) {
		t.Fatalf("after the interval: %v", w)
	}
	var nilReporter *Reporter
	nilReporter.Refused("tls", AddressCap, "x") // no panic
}
