package broker_test

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/refusal"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
)

// dialFrom connects to addr from the loopback source ip.
func dialFrom(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectDropped fails unless the server closes c without sending anything.
func expectDropped(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err == nil {
		t.Fatalf("read %d bytes from a connection that should have been dropped", n)
	}
	if !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("connection not dropped: %v", err)
	}
}

// TestRefusedConnectionsCountedAndLogged: connections dropped by the
// per-address cap and rate are counted by listener and reason, and one
// warning (not one per connection) names the address; another address is
// still served.
func TestRefusedConnectionsCountedAndLogged(t *testing.T) {
	logs := &testkit.LogBuffer{}
	rec := &testkit.Metrics{}
	s := dpsdtest.Start(t, dpsdtest.Options{
		Logger:  slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Metrics: rec,
		Limits:  broker.Limits{ConnectionsPerAddress: 1, ConnectionsPerAddressPerMinute: 1, ConnectionBurstPerAddress: 2},
	})
	held := dialFrom(t, "127.0.0.1", s.TCPAddr)           // admitted: the first token and the one slot
	expectDropped(t, dialFrom(t, "127.0.0.1", s.TCPAddr)) // the second token, but no slot
	expectDropped(t, dialFrom(t, "127.0.0.1", s.TCPAddr)) // no token
	expectDropped(t, dialFrom(t, "127.0.0.1", s.TCPAddr)) // no token
	got := rec.ConnectionsRefused()
	if got[broker.ListenerTCP+"/"+refusal.AddressCap] != 1 || got[broker.ListenerTCP+"/"+refusal.AddressRate] != 2 || len(got) != 2 {
		t.Fatalf("refusals counted %v, want 1 %s and 2 %s on %s", got, refusal.AddressCap, refusal.AddressRate, broker.ListenerTCP)
	}
	warns := logs.Records(t, "connection refused by a per-address limit")
	if len(warns) != 1 || warns[0]["level"] != "WARN" || warns[0]["address"] != "127.0.0.1" || warns[0]["listener"] != broker.ListenerTCP {
		t.Fatalf("warnings %v, want one naming 127.0.0.1", warns)
	}

	// Another address has its own budget and slot.
	other := dialFrom(t, "127.0.0.2", s.TCPAddr)
	other.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := other.Write(mqtttest.Encode(mqtttest.ConnectPacket("other-addr", s.IDScope+"/registrations/other-addr/api-version=2019-03-31", ""))); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(other, ack); err != nil || ack[3] != 0 {
		t.Fatalf("another address: CONNACK %x %v", ack, err)
	}
	held.Close()
}
