package hooks_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
)

// TestRefusedConnectLoggedOnce: a CONNECT the service refuses is logged
// once, by the service, with the reason and the trackingId (not a second
// time by the hook).
func TestRefusedConnectLoggedOnce(t *testing.T) {
	logs := &testkit.LogBuffer{}
	s := dpsdtest.Start(t, dpsdtest.Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	d := enrollSymmetric(t, s, "sym-logged-once")
	wrong := symDevice{id: d.id, key: make([]byte, 32)}
	c := mqtttest.Dial(t, s.TCPAddr)
	if code, _ := c.Connect(d.id, username(s, d.id), wrong.sas(s, time.Now().Add(time.Hour)), true, 0); code != 5 {
		t.Fatalf("CONNACK %d, want 5", code)
	}
	c.ExpectClosed()
	recs := logs.Records(t, "connect refused")
	if len(recs) != 1 {
		t.Fatalf("%d log records for one refused CONNECT, want 1: %v", len(recs), recs)
	}
	if r := recs[0]; r["trackingId"] == "" || r["trackingId"] == nil || !strings.Contains(r["reason"].(string), "SAS does not verify") {
		t.Fatalf("the record lacks the trackingId or the reason: %v", r)
	}
}
