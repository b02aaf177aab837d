package provision

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/allocator/allocatortest"
	"github.com/tpmdps/dpsd/hubconn"
	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/iothubtest"
	"github.com/tpmdps/dpsd/store"
)

// hubEnv is an env whose service hands devices off to stand-in IoT hubs
// and calls a test webhook, with the outbox's workers running.
type hubEnv struct {
	*env
	hubs    []*iothubtest.Hub
	webhook *allocatortest.Server
	factory *aliasFactory
	done    chan struct{}
}

// aliasFactory is the HTTP connector factory, except that a hub name
// given an alias is handed to that stand-in (for hub names that resolve
// nowhere, as the tutorial's).
type aliasFactory struct {
	http  hubconn.HTTPFactory
	alias map[string]*iothubtest.Hub
}

func (f *aliasFactory) For(h *store.LinkedHub) (hubconn.Connector, error) {
	if hub := f.alias[strings.ToLower(h.Name)]; hub != nil {
		cs, err := hubconn.ParseConnectionString(hub.ConnectionString)
		if err != nil {
			return nil, err
		}
		return hubconn.NewIoTHub(cs, hubconn.Options{Client: f.http.Client}), nil
	}
	return f.http.For(h)
}

// newHubEnv starts n stand-in hubs and a webhook (the documentation's
// sample function), and a service whose workers run until the test ends.
func newHubEnv(t testing.TB, n int, mods ...func(*Config)) *hubEnv {
	t.Helper()
	roots := x509.NewCertPool()
	var hubs []*iothubtest.Hub
	for range n {
		h := iothubtest.Start(t, iothubtest.Options{})
		roots.AppendCertsFromPEM(h.CACertPEM)
		hubs = append(hubs, h)
	}
	wh := allocatortest.NewServer(t, allocatortest.Contoso)
	roots.AppendCertsFromPEM(wh.CertPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	f := &aliasFactory{http: hubconn.HTTPFactory{Client: client, RequestTimeout: 2 * time.Second}, alias: map[string]*iothubtest.Hub{}}
	all := append([]func(*Config){func(c *Config) {
		c.Connectors = f
		c.Custom = allocator.NewWebhook(allocator.WebhookOptions{Client: client})
		c.Handoff = HandoffConfig{Workers: 4, Poll: 5 * time.Millisecond, Timeout: time.Minute, Lease: 30 * time.Second,
			RetryMin: time.Second, RetryMax: 4 * time.Second}
	}}, mods...)
	e := &hubEnv{env: newEnv(t, all...), hubs: hubs, webhook: wh, factory: f, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(e.ctx)
	go func() {
		defer close(e.done)
		_ = e.svc.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-e.done
	})
	return e
}

// link links a stand-in hub (its host name, its connection string).
func (e *hubEnv) link(h *iothubtest.Hub) *store.LinkedHub {
	e.t.Helper()
	return e.putHub(&store.LinkedHub{Name: h.HostName, ConnectionString: h.ConnectionString})
}

func (e *hubEnv) putHub(h *store.LinkedHub) *store.LinkedHub {
	e.t.Helper()
	out, err := e.st.PutLinkedHub(e.ctx, h, "")
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// awaitFinal polls until the operation is final and returns it. step > 0
// advances the service's clock by step before each poll (for retries).
func (e *hubEnv) awaitFinal(id Identity, opID string, step time.Duration) *OperationStatus {
	e.t.Helper()
	var last Response
	testkit.Await(e.t, "the registration "+opID+" to be final", func() bool {
		if step > 0 {
			e.clock.Advance(step)
		}
		last = e.svc.Poll(e.ctx, id, opID, "tr-poll")
		return last.Status != 202
	})
	return e.pollFinal(id, opID)
}

// pollAssigning asserts that the operation is still assigning: a 202
// with the registration id in registrationState (IoT Edge needs it).
func (e *hubEnv) pollAssigning(id Identity, opID string) {
	e.t.Helper()
	resp := e.svc.Poll(e.ctx, id, opID, "tr-poll")
	body, ok := resp.Body.(*OperationStatus)
	if resp.Status != 202 || !ok || body.Status != "assigning" || body.RegistrationState == nil ||
		body.RegistrationState.RegistrationID != id.RegistrationID || body.RegistrationState.Status != "assigning" || resp.RetryAfter <= 0 {
		e.t.Fatalf("poll while assigning: %d %s retry %v", resp.Status, encode(e.t, resp.Body), resp.RetryAfter)
	}
}

// issueCert makes a CA-signed device certificate around the clock.
func (e *hubEnv) issueCert(ca *devca.CA, cn string) devCert { return e.issue(ca, cn) }

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
