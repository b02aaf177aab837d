// Package dpsdtest runs the whole server in process for tests: a bbolt store
// in t.TempDir(), the provisioning service and the MQTT broker on 127.0.0.1
// random ports (plain TCP, TLS with a freshly generated CA, and optionally
// secure WebSocket). Everything is closed by t.Cleanup.
//
// It sits above the packages it wires together (api, broker, hooks,
// provision, store/bolt), as net/http/httptest sits beside net/http:
// nothing but tests imports it.
package dpsdtest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/api"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/hubconn"
	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/issuer"
	"github.com/tpmdps/dpsd/provision"
	"github.com/tpmdps/dpsd/store/bolt"
)

// shutdownWait bounds the shutdown of a test server at cleanup.
const shutdownWait = 60 * time.Second

// Defaults of Options.
const (
	DefaultIDScope = "0ne0000TEST"
	DefaultHub     = "hub.test.localdomain"
)

// Options tune the test server; the zero value is usable.
type Options struct {
	// IDScope defaults to DefaultIDScope.
	IDScope string
	// Hubs default to []string{DefaultHub}.
	Hubs []string
	// Limits are the broker's connection limits (zero fields take the
	// broker defaults).
	Limits broker.Limits
	// HookLimits are the hook's session and request limits (zero fields take
	// the hook's defaults).
	HookLimits hooks.Limits
	// ConnectTimeout is the CONNECT deadline (broker default when zero).
	ConnectTimeout time.Duration
	// ChallengeLifetime is the TPM challenge lifetime (service default when zero).
	ChallengeLifetime time.Duration
	// RetryAfter is the service's 202 retry-after (service default when zero).
	RetryAfter time.Duration
	// WebSocket also starts MQTT over secure WebSocket.
	WebSocket bool
	// TLSAddr is the MQTT over TLS address (default "127.0.0.1:0"). Tests of
	// clients with fixed ports set e.g. "127.0.0.1:8883".
	TLSAddr string
	// WSAddr is the secure WebSocket address (default "127.0.0.1:0"); setting
	// it implies WebSocket.
	WSAddr string
	// APIAddr, when set, also serves the service API (package api) over HTTPS
	// there, with the server certificate, API host name "localhost" and the
	// owner policy whose connection string is Server.ServiceConnectionString.
	APIAddr string
	// APIWebSocket makes the service API listener also carry MQTT over
	// WebSocket (broker.WebSocketHandler; WebSocket upgrade requests on any
	// path), as dpsd can on port 443. The listener then requests client
	// certificates, for X.509 over WebSocket.
	APIWebSocket bool
	// Metrics, if set, receives the hook's measurements (hooks.Config.Metrics)
	// and counts the connections refused by a per-address limit
	// (broker.Config.Metrics).
	Metrics hooks.Metrics
	// Observer, if set, is the service's provision.Observer.
	Observer provision.Observer
	// Custom calls custom allocation webhooks, Connectors builds the linked
	// hubs' hand-off connectors and Handoff tunes the outbox (see
	// provision.Config); the outbox's workers run for the server's life.
	Custom     allocator.Custom
	Connectors hubconn.Factory
	Handoff    provision.HandoffConfig
	// TPMRoots is the service's EK certificate trust (dpsd's tpm-roots).
	TPMRoots *attest.CertBundle
	// Issuer, if set, signs the certificates devices ask for with a CSR
	// (provision.Config.Issuer); nil issues none.
	Issuer issuer.Issuer
	// Logger receives server logs. Default: discarded, unless the environment
	// variable DPSD_TEST_LOG is set, then text on stderr at debug level.
	Logger *slog.Logger
}

// Server is a running in-process server.
type Server struct {
	// TCPAddr, TLSAddr and WSAddr are host:port of the listeners (WSAddr is
	// "" unless Options.WebSocket).
	TCPAddr, TLSAddr, WSAddr string
	// CACertPEM is the CA that signed the server certificate (names
	// "localhost" and "127.0.0.1"); RootCAs holds it.
	CACertPEM []byte
	RootCAs   *x509.CertPool
	// IDScope is the scope devices must use.
	IDScope string
	// APIAddr is host:port of the service API ("" unless Options.APIAddr).
	APIAddr string
	// ServiceConnectionString authorizes the owner policy on the service API
	// (HostName=localhost; "" unless Options.APIAddr). It holds a secret.
	ServiceConnectionString string
	// ChallengeSecret is the service's TPM challenge secret.
	ChallengeSecret []byte
	// Store is the service's store: add enrollments to it directly.
	Store *bolt.Store
	// Service is the provisioning service.
	Service *provision.Service
	// Broker is the MQTT broker.
	Broker *broker.Broker
}

// TLSConfig returns a client tls.Config trusting the test CA for "localhost".
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: s.RootCAs, ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

// Start starts a server and registers its shutdown with t.Cleanup. It fails
// the test on any error.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	log := opts.Logger
	if log == nil {
		if os.Getenv("DPSD_TEST_LOG") != "" {
			log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		} else {
			log = slog.New(slog.DiscardHandler)
		}
	}
	if opts.IDScope == "" {
		opts.IDScope = DefaultIDScope
	}
	if len(opts.Hubs) == 0 {
		opts.Hubs = []string{DefaultHub}
	}
	dir := t.TempDir()
	st, err := bolt.Open(filepath.Join(dir, "dpsd.db"), bolt.Options{Timeout: 5 * time.Second, Logger: log})
	if err != nil {
		t.Fatalf("dpsdtest: opening store: %v", err)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		t.Fatal(err)
	}
	svc, err := provision.New(provision.Config{
		IDScope:           opts.IDScope,
		Store:             st,
		ChallengeSecret:   secret,
		ChallengeLifetime: opts.ChallengeLifetime,
		Hubs:              opts.Hubs,
		RetryAfter:        opts.RetryAfter,
		Observer:          opts.Observer,
		Custom:            opts.Custom,
		Connectors:        opts.Connectors,
		Handoff:           opts.Handoff,
		TPMRoots:          opts.TPMRoots,
		Issuer:            opts.Issuer,
		Logger:            log,
	})
	if err != nil {
		st.Close()
		t.Fatalf("dpsdtest: provision.New: %v", err)
	}
	now := time.Now()
	ca, err := devca.NewCA("dpsdtest CA", now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue([]string{"localhost", "127.0.0.1"}, now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := devca.TLSConfig(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	// Request a client certificate without verifying it: X.509 attestation
	// is decided by the service per enrollment, as in dpsd serve.
	tlsCfg.ClientAuth = tls.RequestClientCert
	if opts.TLSAddr == "" {
		opts.TLSAddr = "127.0.0.1:0"
	}
	if opts.WSAddr != "" {
		opts.WebSocket = true
	} else {
		opts.WSAddr = "127.0.0.1:0"
	}
	cfg := broker.Config{
		TCPAddr:        "127.0.0.1:0",
		TLSAddr:        opts.TLSAddr,
		TLSConfig:      tlsCfg,
		ConnectTimeout: opts.ConnectTimeout,
		Limits:         opts.Limits,
		Logger:         log,
		Metrics:        opts.Metrics,
	}
	if opts.WebSocket {
		cfg.WSAddr = opts.WSAddr
	}
	b, err := broker.New(cfg, func(env broker.HookEnv) (broker.Hook, error) {
		return hooks.New(hooks.Config{Service: svc, Server: env.Server, Limits: opts.HookLimits,
			Logger: log, Metrics: opts.Metrics, Refusals: env.Refusals})
	})
	if err != nil {
		st.Close()
		t.Fatalf("dpsdtest: broker.New: %v", err)
	}
	if err := b.Start(context.Background()); err != nil {
		st.Close()
		t.Fatalf("dpsdtest: broker.Start: %v", err)
	}
	outboxCtx, stopOutbox := context.WithCancel(context.Background())
	outboxDone := make(chan struct{})
	go func() {
		defer close(outboxDone)
		_ = svc.Run(outboxCtx)
	}()

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	s := &Server{
		TCPAddr:         b.Addr(broker.ListenerTCP).String(),
		TLSAddr:         b.Addr(broker.ListenerTLS).String(),
		CACertPEM:       ca.CertPEM(),
		RootCAs:         pool,
		IDScope:         opts.IDScope,
		ChallengeSecret: secret,
		Store:           st,
		Service:         svc,
		Broker:          b,
	}
	if opts.WebSocket {
		s.WSAddr = b.Addr(broker.ListenerWS).String()
	}
	t.Cleanup(func() {
		// A generous bound: tests that hold a thousand connections close
		// them all here, on a machine that may be busy with other tests.
		ctx, cancel := context.WithTimeout(context.Background(), shutdownWait)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("dpsdtest: broker shutdown: %v\n%s", err, brokerStacks())
		}
		stopOutbox()
		<-outboxDone
		if err := st.Close(); err != nil {
			t.Errorf("dpsdtest: store close: %v", err)
		}
	})
	if opts.APIAddr != "" {
		startAPI(t, s, opts, tlsCfg, log)
	}
	return s
}

// startAPI serves the service API on opts.APIAddr for s (with MQTT over
// WebSocket when opts.APIWebSocket), closed by t.Cleanup.
func startAPI(t testing.TB, s *Server, opts Options, tlsCfg *tls.Config, log *slog.Logger) {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	h, err := api.New(api.Config{
		Store:    s.Store,
		HostName: "localhost",
		Policies: []api.Policy{{Name: api.DefaultPolicyName, Key: key, Rights: api.RightAll}},
		Logger:   log,
	})
	if err != nil {
		t.Fatalf("dpsdtest: api.New: %v", err)
	}
	tc := tlsCfg.Clone()
	tc.ClientAuth = tls.NoClientCert
	if opts.APIWebSocket {
		ws, err := s.Broker.WebSocketHandler()
		if err != nil {
			t.Fatalf("dpsdtest: %v", err)
		}
		apiHandler := h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if websocket.IsWebSocketUpgrade(r) {
				ws.ServeHTTP(w, r)
				return
			}
			apiHandler.ServeHTTP(w, r)
		})
		tc.ClientAuth = tls.RequestClientCert
	}
	ln, err := net.Listen("tcp", opts.APIAddr)
	if err != nil {
		t.Fatalf("dpsdtest: service API: listen on %s: %v", opts.APIAddr, err)
	}
	tc.NextProtos = []string{"h2", "http/1.1"}
	srv := &http.Server{Handler: h, TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("dpsdtest: service API stopped", "error", err)
		}
	}()
	s.APIAddr = ln.Addr().String()
	s.ServiceConnectionString = "HostName=localhost;SharedAccessKeyName=" + api.DefaultPolicyName +
		";SharedAccessKey=" + base64.StdEncoding.EncodeToString(key)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownWait)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("dpsdtest: service API shutdown: %v", err)
		}
		<-done
	})
}

// brokerStacks returns the stacks of the goroutines in the MQTT broker and
// its hook, so that a shutdown that does not finish says where it waits.
func brokerStacks() string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var out strings.Builder
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "mochi-mqtt") || strings.Contains(g, "dpsd/hooks") || strings.Contains(g, "dpsd/broker") {
			out.WriteString(g)
			out.WriteString("\n\n")
		}
	}
	return out.String()
}
