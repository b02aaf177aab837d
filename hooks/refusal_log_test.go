package hooks_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
)

// logSink is a log destination safe for concurrent use.
type logSink struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// records returns the JSON records whose message starts with prefix.
func (l *logSink) records(t *testing.T, prefix string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(l.b.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			if msg, _ := m["msg"].(string); strings.HasPrefix(msg, prefix) {
				out = append(out, m)
			}
		}
	}
	return out
}

// TestRefusedConnectLoggedOnce: a CONNECT the service refuses is logged
// once, by the service, with the reason and the trackingId (not a second
// time by the hook).
func TestRefusedConnectLoggedOnce(t *testing.T) {
	logs := &logSink{}
	s := dpsdtest.Start(t, dpsdtest.Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	d := enrollSymmetric(t, s, "sym-logged-once")
	wrong := symDevice{id: d.id, key: make([]byte, 32)}
	c := mqtttest.Dial(t, s.TCPAddr)
	if code, _ := c.Connect(d.id, username(s, d.id), wrong.sas(s, time.Now().Add(time.Hour)), true, 0); code != 5 {
		t.Fatalf("CONNACK %d, want 5", code)
	}
	c.ExpectClosed()
	recs := logs.records(t, "connect refused")
	if len(recs) != 1 {
		t.Fatalf("%d log records for one refused CONNECT, want 1: %v", len(recs), recs)
	}
	if r := recs[0]; r["trackingId"] == "" || r["trackingId"] == nil || !strings.Contains(r["reason"].(string), "SAS does not verify") {
		t.Fatalf("the record lacks the trackingId or the reason: %v", r)
	}
}
