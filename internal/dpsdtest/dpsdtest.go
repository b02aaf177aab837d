// Package dpsdtest runs the whole server in process for tests: a bbolt store
// in t.TempDir(), the provisioning service and the MQTT broker on 127.0.0.1
// random ports (plain TCP, TLS with a freshly generated CA, and optionally
// secure WebSocket). Everything is closed by t.Cleanup.
package dpsdtest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/provision"
	"github.com/tpmdps/dpsd/store"
)

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
	// Limits are passed to the broker (zero fields take the broker defaults).
	Limits broker.Limits
	// ConnectTimeout is the CONNECT deadline (broker default when zero).
	ConnectTimeout time.Duration
	// ChallengeLifetime is the TPM challenge lifetime (service default when zero).
	ChallengeLifetime time.Duration
	// RetryAfter is the service's 202 retry-after (service default when zero).
	RetryAfter time.Duration
	// WebSocket also starts MQTT over secure WebSocket.
	WebSocket bool
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
	// ChallengeSecret is the service's TPM challenge secret.
	ChallengeSecret []byte
	// Store is the service's store: add enrollments to it directly.
	Store *store.Bolt
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
	st, err := store.OpenBolt(filepath.Join(dir, "dpsd.db"), store.BoltOptions{Timeout: 5 * time.Second, Logger: log})
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
	cfg := broker.Config{
		TCPAddr:        "127.0.0.1:0",
		TLSAddr:        "127.0.0.1:0",
		TLSConfig:      tlsCfg,
		ConnectTimeout: opts.ConnectTimeout,
		Limits:         opts.Limits,
		Logger:         log,
	}
	if opts.WebSocket {
		cfg.WSAddr = "127.0.0.1:0"
	}
	b, err := broker.New(cfg, svc)
	if err != nil {
		st.Close()
		t.Fatalf("dpsdtest: broker.New: %v", err)
	}
	if err := b.Start(context.Background()); err != nil {
		st.Close()
		t.Fatalf("dpsdtest: broker.Start: %v", err)
	}
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
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("dpsdtest: broker shutdown: %v", err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("dpsdtest: store close: %v", err)
		}
	})
	return s
}
