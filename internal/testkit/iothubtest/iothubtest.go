// Package iothubtest is a stand-in for Azure IoT Hub's registry and twin
// REST API, for tests: devices (PUT, GET, DELETE, with etags and If-Match)
// and twins (GET, PATCH, PUT), authorized by a service SAS token, with the
// hub's error body form ({"Message":"ErrorCode:<Name>;<message>"} and the
// iothub-errorcode header). It is written from the published API
// specification (the service's swagger and the identity registry and
// device twin guides), not from any client, and kept honest by running the
// official Node.js service client (azure-iothub) against it in the interop
// tests. Faults for failure tests: throttling (429), a hub that is down
// (connections closed unanswered), a slow hub, and creates held after the
// device is stored (to crash a client between the hub's write and its
// own); every request is counted.
package iothubtest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/devca"
)

// DefaultPolicy is the shared access policy of the hub's connection string.
const DefaultPolicy = "iothubowner"

// Options configure a stand-in hub. The zero value is usable.
type Options struct {
	// Addr is the listen address (default "127.0.0.1:0"). The Node.js
	// client connects only to port 443: the interop test listens on
	// 127.0.0.1:443 with HostName "localhost".
	Addr string
	// HostName is the hub's host name, in its connection string, its
	// certificate and the SAS tokens it accepts (default: the listener's
	// host:port, which Go clients can use; the Node.js client cannot).
	HostName string
	// Policy is the name of the hub's only shared access policy (default
	// DefaultPolicy).
	Policy string
	// Key is the policy's key (default: 32 random bytes).
	Key []byte
}

// Hub is a running stand-in.
type Hub struct {
	// HostName is the hub's host name.
	HostName string
	// Addr is the listener's address.
	Addr string
	// ConnectionString is HostName=...;SharedAccessKeyName=...;SharedAccessKey=...
	ConnectionString string
	// CACertPEM is the CA of the hub's certificate (for NODE_EXTRA_CA_CERTS);
	// Roots holds it.
	CACertPEM []byte
	Roots     *x509.CertPool

	policy string
	key    []byte
	srv    *http.Server
	ln     net.Listener

	mu       sync.Mutex
	devices  map[string]*device
	etagSeq  int64
	counts   map[string]int
	creates  map[string]int
	requests []Request
	throttle int
	retryAft time.Duration
	down     bool
	delay    time.Duration
	hold     chan string
	release  chan struct{}
}

// Request is one request the hub answered.
type Request struct {
	Method, Path, IfMatch, UserAgent, APIVersion string
	Status                                       int
}

// Start starts a stand-in hub, closed by t.Cleanup.
func Start(t testing.TB, opts Options) *Hub {
	t.Helper()
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Policy == "" {
		opts.Policy = DefaultPolicy
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		t.Fatalf("iothubtest: listen on %s: %v", opts.Addr, err)
	}
	host := opts.HostName
	if host == "" {
		host = ln.Addr().String()
	}
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	now := time.Now()
	ca, err := devca.NewCA("iothubtest CA", now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue([]string{name}, now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := devca.TLSConfig(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	key := append([]byte(nil), opts.Key...)
	if len(key) == 0 {
		key = make([]byte, 32)
		if _, err := randRead(key); err != nil {
			t.Fatal(err)
		}
	}
	h := &Hub{
		HostName: host, Addr: ln.Addr().String(), policy: opts.Policy, key: key,
		CACertPEM: ca.CertPEM(), Roots: x509.NewCertPool(),
		devices: map[string]*device{}, counts: map[string]int{}, creates: map[string]int{},
	}
	h.Roots.AddCert(ca.Cert)
	h.ConnectionString = "HostName=" + host + ";SharedAccessKeyName=" + opts.Policy + ";SharedAccessKey=" + base64.StdEncoding.EncodeToString(key)
	h.ln = tls.NewListener(ln, tlsCfg)
	h.srv = &http.Server{Handler: http.HandlerFunc(h.serve), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.srv.Serve(h.ln)
	}()
	t.Cleanup(func() {
		h.mu.Lock()
		if h.release != nil {
			close(h.release)
			h.release, h.hold = nil, nil
		}
		h.mu.Unlock()
		_ = h.srv.Close()
		<-done
	})
	return h
}

// Client returns an HTTP client that trusts the hub's certificate.
func (h *Hub) Client() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: h.Roots, MinVersion: tls.VersionTLS12}}}
}

// Throttle makes the next n requests answer 429 ThrottlingException, with
// Retry-After when retryAfter > 0.
func (h *Hub) Throttle(n int, retryAfter time.Duration) {
	h.mu.Lock()
	h.throttle, h.retryAft = n, retryAfter
	h.mu.Unlock()
}

// SetDown makes the hub close every request's connection without an
// answer (true) or serve again (false).
func (h *Hub) SetDown(down bool) {
	h.mu.Lock()
	h.down = down
	h.mu.Unlock()
}

// SetDelay delays every answer by d (0: none).
func (h *Hub) SetDelay(d time.Duration) {
	h.mu.Lock()
	h.delay = d
	h.mu.Unlock()
}

// HoldCreates makes every device create, once the device is stored, send
// its id on the channel returned and wait for release (or for its client
// to go) before it answers: a client can be stopped after the hub wrote
// and before it heard so. release ends the hold for all.
func (h *Hub) HoldCreates() (created <-chan string, release func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch, rel := make(chan string, 64), make(chan struct{})
	h.hold, h.release = ch, rel
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			h.mu.Lock()
			if h.release == rel {
				close(rel)
				h.hold, h.release = nil, nil
			}
			h.mu.Unlock()
		})
	}
}

// Count returns how many requests of op were answered with success: one
// of "create", "update", "getDevice", "delete", "getTwin", "patchTwin",
// "replaceTwin".
func (h *Hub) Count(op string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[op]
}

// Creates returns how many times the device id was created.
func (h *Hub) Creates(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.creates[id]
}

// Requests returns every request answered so far, in order.
func (h *Hub) Requests() []Request {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Request(nil), h.requests...)
}

// DeviceIDs returns the ids of the devices in the registry.
func (h *Hub) DeviceIDs() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for id := range h.devices {
		out = append(out, id)
	}
	return out
}

// Identity is a device identity as the registry holds it.
type Identity struct {
	DeviceID, ETag, GenerationID, Status, AuthType string
	PrimaryKey, SecondaryKey                       string
	PrimaryThumbprint, SecondaryThumbprint         string
	IoTEdge                                        bool
}

// Device returns the identity of a device, if it exists.
func (h *Hub) Device(id string) (Identity, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.devices[id]
	if !ok {
		return Identity{}, false
	}
	return d.identity(), true
}

// Twin returns a device twin's tags and desired properties (without
// $metadata and $version), if the device exists.
func (h *Hub) Twin(id string) (tags, desired map[string]any, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.devices[id]
	if !ok {
		return nil, nil, false
	}
	return deepCopy(d.tags), deepCopy(d.desired), true
}

// AddDevice puts a device with symmetric keys and the given twin into the
// registry, as if created earlier (a device to migrate away).
func (h *Hub) AddDevice(id, primaryKey, secondaryKey string, tags, desired map[string]any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := &device{id: id, generationID: h.nextETag(), status: "enabled", authType: "sas",
		primaryKey: primaryKey, secondaryKey: secondaryKey, tags: deepCopy(tags), desired: deepCopy(desired)}
	if d.tags == nil {
		d.tags = map[string]any{}
	}
	if d.desired == nil {
		d.desired = map[string]any{}
	}
	d.etag, d.twinETag = h.nextETag(), h.nextETag()
	d.twinVersion, d.desiredVersion = 1, 1
	h.devices[id] = d
}

// SetStatus sets a device's status (enabled or disabled), as an operator
// of the hub would, with a new etag.
func (h *Hub) SetStatus(id, status string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d, ok := h.devices[id]; ok {
		d.status = status
		d.etag = h.nextETag()
	}
}
