package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device"
)

// slowPut opens an HTTP/1.1 connection to the API listener and sends the
// headers of a PUT declaring a 1000-byte body (with authorization when
// token is not ""), then only 5 bytes of the body.
func (p *inProcess) slowPut(t *testing.T, id, token string) net.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", p.API, &tls.Config{RootCAs: p.pool, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	auth := ""
	if token != "" {
		auth = "Authorization: " + token + "\r\n"
	}
	fmt.Fprintf(c, "PUT /enrollments/%s?api-version=2021-10-01 HTTP/1.1\r\nHost: localhost\r\n%sContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"reg", id, auth)
	return c
}

// readAnswer awaits the answer on c until deadline and decodes its DPS error body.
func readAnswer(c net.Conn, deadline time.Time) (*http.Response, wire.Error, error) {
	var eb wire.Error
	c.SetReadDeadline(deadline)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, eb, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return res, eb, err
	}
	if err := json.Unmarshal(b, &eb); err != nil {
		return res, eb, fmt.Errorf("body %q: %w", b, err)
	}
	return res, eb, nil
}

// TestAPIUnauthenticatedBodyNotAwaited: 100 PUTs without credentials that
// declare a 1000-byte body and send 5 bytes all get their 401 (the DPS
// error) without the server waiting for the rest, and each connection is
// closed after it. The read timeout is the default (a minute): the answers
// must not wait for it.
func TestAPIUnauthenticatedBodyNotAwaited(t *testing.T) {
	p := serveInProcess(t, "127.0.0.1:0")
	const n = 100
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = p.slowPut(t, fmt.Sprintf("dev-%d", i), "")
	}
	deadline := time.Now().Add(20 * time.Second)
	for i, c := range conns {
		res, eb, err := readAnswer(c, deadline)
		if err != nil {
			t.Fatalf("request %d: no answer: %v", i, err)
		}
		if res.StatusCode != http.StatusUnauthorized || eb.ErrorCode != 401002 || eb.TrackingID == "" || !res.Close {
			t.Fatalf("request %d: %d %+v (close %v)", i, res.StatusCode, eb, res.Close)
		}
		// The server closes the connection rather than read the rest.
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatalf("request %d: the connection stayed open", i)
		}
	}
}

// TestAPISlowBodyAndWebSocket: with api-read-timeout and api-write-timeout
// at 1 s, an authorized PUT whose body stalls gets 408 in the DPS shape
// (nothing is stored), while a device on MQTT over WebSocket on the same
// listener, idle for 3 s between its register and its poll, is not cut off.
func TestAPISlowBodyAndWebSocket(t *testing.T) {
	p := serveInProcess(t, "127.0.0.1:0", "-api-read-timeout", "1s", "-api-write-timeout", "1s", "-retry-after", "3s")
	key := enrollThroughAPI(t, p.started, "ws-dev")
	_, cs := p.ownerClient(t, 10*time.Second)
	tok := attest.SignSAS(cs.Key, cs.HostName, time.Now().Add(time.Hour), cs.KeyName)
	c := p.slowPut(t, "slow-dev", tok)
	res, eb, err := readAnswer(c, time.Now().Add(30*time.Second))
	if err != nil {
		t.Fatalf("a stalled body got no answer: %v", err)
	}
	if res.StatusCode != http.StatusRequestTimeout || eb.ErrorCode/1000 != http.StatusRequestTimeout || eb.Message == "" {
		t.Fatalf("stalled body: %d %+v", res.StatusCode, eb)
	}
	if code, _ := p.get(t, "/healthz"); code != http.StatusOK {
		t.Fatalf("healthz %d", code)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := device.Provision(ctx, device.Config{Host: "localhost", Port: apiPort(t, p.API), Transport: device.TransportWebSocket,
		RootCAs: p.pool, IDScope: p.IDScope, RegistrationID: "ws-dev", Attestation: &device.SymmetricKey{Key: key}})
	if err != nil || r.Status != device.StatusAssigned {
		t.Fatalf("provisioning over WebSocket with 3 s between register and poll: %+v %v", r, err)
	}
}
