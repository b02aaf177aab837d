package broker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/refusal"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
	"github.com/tpmdps/dpsd/provision"
	"github.com/tpmdps/dpsd/store/bolt"
)

// selfSignedClient returns a client certificate with CN id.
func selfSignedClient(t *testing.T, id string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: id},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// wsConnack dials the API listener's WebSocket, sends a CONNECT without a
// password and returns the CONNACK return code.
func wsConnack(t *testing.T, s *dpsdtest.Server, path, id string, certs []tls.Certificate) byte {
	t.Helper()
	tc := s.TLSConfig()
	tc.Certificates = certs
	dialer := websocket.Dialer{TLSClientConfig: tc, Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second}
	ws, _, err := dialer.Dial("wss://"+s.APIAddr+path, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	defer ws.Close()
	user := s.IDScope + "/registrations/" + id + "/api-version=2019-03-31"
	pkt := mqtttest.Encode(mqtttest.ConnectPacket(id, user, "")) // no password
	if err := ws.WriteMessage(websocket.BinaryMessage, pkt); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, msg, err := ws.ReadMessage()
	if err != nil {
		return 0xff // closed without a CONNACK
	}
	if len(msg) != 4 || msg[0] != 0x20 {
		t.Fatalf("CONNACK %x", msg)
	}
	return msg[3]
}

// TestWebSocketHandlerClientCertificate: on the API listener, a CONNECT
// without a password is a restricted session (CONNACK 0) without a client
// certificate, and an X.509 attempt with one: the certificate reached the
// service, which refuses an unknown device.
func TestWebSocketHandlerClientCertificate(t *testing.T) {
	s := dpsdtest.Start(t, dpsdtest.Options{APIAddr: "127.0.0.1:0", APIWebSocket: true})
	if code := wsConnack(t, s, "/$iothub/websocket", "ws-restricted", nil); code != 0 {
		t.Fatalf("restricted session CONNACK %d", code)
	}
	if code := wsConnack(t, s, "/", "ws-x509", []tls.Certificate{selfSignedClient(t, "ws-x509")}); code == 0 {
		t.Fatal("an unknown X.509 device was accepted (or its certificate never reached the service)")
	}
}

// TestWebSocketHandlerLimitsAndShutdown: the per-address cap applies to the
// handler's connections, and Shutdown closes one that never sent CONNECT.
func TestWebSocketHandlerLimitsAndShutdown(t *testing.T) {
	rec := &testkit.Metrics{}
	s := dpsdtest.Start(t, dpsdtest.Options{APIAddr: "127.0.0.1:0", APIWebSocket: true, Metrics: rec,
		ConnectTimeout: time.Minute, Limits: broker.Limits{ConnectionsPerAddress: 1}})
	dialer := websocket.Dialer{TLSClientConfig: s.TLSConfig(), Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second}
	first, _, err := dialer.Dial("wss://"+s.APIAddr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	testkit.Await(t, "the first WebSocket connection counted", func() bool {
		return s.Broker.Connections()[broker.ListenerWSHandler] == 1
	})
	if _, resp, err := dialer.Dial("wss://"+s.APIAddr+"/", nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second connection from one address: %v %v", err, resp)
	}
	if got := rec.ConnectionsRefused(); got[broker.ListenerWSHandler+"/"+refusal.AddressCap] != 1 {
		t.Fatalf("refusals counted %v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Broker.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	first.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, msg, err := first.ReadMessage(); err == nil {
		t.Fatalf("connection still open after shutdown, read %x", msg)
	} else if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
		t.Fatal("shutdown did not close a connection that never sent CONNECT")
	}
	// After shutdown the handler refuses upgrades.
	if _, resp, err := dialer.Dial("wss://"+s.APIAddr+"/", nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("upgrade after shutdown: %v %v", err, resp)
	}
}

// TestBrokerMetrics: the hook's Metrics receives the CONNECT phase and the
// hook's own refusals (here the restricted session cap).
func TestBrokerMetrics(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), "m.db"), bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	svc, err := provision.New(provision.Config{IDScope: dpsdtest.DefaultIDScope, Store: st, ChallengeSecret: make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	rec := &testkit.Metrics{}
	b, err := broker.New(broker.Config{TCPAddr: "127.0.0.1:0", Metrics: rec},
		dpsHook(svc, hooks.Limits{RestrictedSessions: 1}, rec))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b.Shutdown(ctx)
	})
	connack := func(id string) (net.Conn, byte) {
		c, err := net.Dial("tcp", b.Addr(broker.ListenerTCP).String())
		if err != nil {
			t.Fatal(err)
		}
		pkt := mqtttest.Encode(mqtttest.ConnectPacket(id, dpsdtest.DefaultIDScope+"/registrations/"+id+"/api-version=2019-03-31", ""))
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(pkt); err != nil {
			t.Fatal(err)
		}
		ack := make([]byte, 4)
		if _, err := io.ReadFull(c, ack); err != nil {
			t.Fatalf("CONNACK: %v", err)
		}
		return c, ack[3]
	}
	first, code := connack("metrics-1")
	defer first.Close()
	if code != 0 {
		t.Fatalf("first restricted CONNACK %d", code)
	}
	second, code := connack("metrics-2")
	defer second.Close()
	if code != 3 {
		t.Fatalf("second restricted CONNACK %d, want 3 (cap)", code)
	}
	if refused := rec.ConnectRefusals(); strings.Join(refused, ",") != hooks.RefusedRestrictedCap {
		t.Fatalf("refusals %v", refused)
	}
	if phases := rec.Phases(); strings.Join(phases, ",") != "connect/0,connect/0" {
		t.Fatalf("phases %v", phases)
	}
}
