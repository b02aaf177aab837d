package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tpmdps/dpsd/api"
	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/cmd/dpsd/internal/metrics"
	"github.com/tpmdps/dpsd/internal/config"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/internal/refusal"
	"github.com/tpmdps/dpsd/internal/tlsticket"
	"github.com/tpmdps/dpsd/store"
)

// Paths served on the API listener besides the DPS service API.
const (
	// apiListener names the HTTPS listener in logs and metrics.
	apiListener = "api"
	metricsPath = "/metrics"
	// readyTimeout bounds the readiness checks of one /readyz request.
	readyTimeout = 5 * time.Second
)

// apiParts is what the API listener serves besides the configuration.
type apiParts struct {
	store   store.Store      // the (instrumented) store
	broker  *broker.Broker   // MQTT over WebSocket is handed to it; nil: no WebSocket
	metrics *metrics.Metrics // nil: no /metrics
	tls     *tls.Config      // the server certificate
	tickets *tlsticket.Keys  // session ticket keys (nil: Go's own, per process)
	// running reports whether serve is still running (false once shutting down).
	running func() bool
}

// apiServer is the running HTTPS listener.
type apiServer struct {
	srv  *http.Server
	addr net.Addr
	done chan struct{}
}

// startAPI serves on cfg.APIAddr over HTTPS, as the cloud service does on
// 443: the service API with the owner policy (provisioningserviceowner)
// keyed by the data directory's service policy key, GET /backup, the
// unauthenticated /metrics (unless cfg.MetricsAddr gives it a listener of
// its own), /healthz and /readyz, and MQTT over WebSocket
// for any request that asks to upgrade (at /$iothub/websocket, /, or any
// path). A second policy, provisioningservicereader, may only read. It writes
// both connection strings to the data directory (0600).
func startAPI(ctx context.Context, cfg config.Config, dir *datadir.Dir, parts apiParts, log *slog.Logger) (*apiServer, string, error) {
	apiCfg := api.Config{
		Store:    parts.store,
		HostName: cfg.APIHostName,
		Policies: []api.Policy{
			{Name: api.DefaultPolicyName, Key: dir.Secrets.ServicePolicyKey, Rights: api.RightAll},
			{Name: api.ReadOnlyPolicyName, Key: dir.Secrets.ServiceReadPolicyKey, Rights: api.RightRead},
		},
		Logger: log,
		// /backup copies the store here before sending it: the store's own
		// directory and protection (0700), and room for the store.
		BackupDir: dir.Path,
	}
	dps, err := api.New(apiCfg)
	if err != nil {
		return nil, "", fmt.Errorf("service API: %w", err)
	}
	backup, err := api.NewBackup(apiCfg)
	if err != nil {
		return nil, "", fmt.Errorf("service API: %w", err)
	}
	var ws http.Handler
	if parts.broker != nil {
		if ws, err = parts.broker.WebSocketHandler(); err != nil {
			return nil, "", err
		}
	}
	h := apiHandler(dps, backup, ws, readyChecks(cfg, parts), parts.metrics, cfg.MetricsAddr == "", log)

	csPath, err := dir.WriteConnectionString(cfg.APIHostName, api.DefaultPolicyName)
	if err != nil {
		return nil, "", err
	}
	if _, err := dir.WriteReadOnlyConnectionString(cfg.APIHostName, api.ReadOnlyPolicyName); err != nil {
		return nil, "", err
	}
	// broker.Listen: this listener also carries MQTT over WebSocket, so
	// it gets the MQTT listeners' keep-alive, set once on the socket, and
	// per-address limits of its own before the TLS handshake (broker.Guard).
	ln, err := broker.Listen(ctx, cfg.APIAddr)
	if err != nil {
		return nil, "", fmt.Errorf("service API: %w", err)
	}
	var refused refusal.Counter
	if parts.metrics != nil {
		refused = parts.metrics
	}
	ln = broker.Guard(ln, apiListener, broker.GuardLimits{
		ConnectionsPerAddress:          cfg.APIConnsPerAddress,
		ConnectionsPerAddressPerMinute: cfg.APIConnRatePerAddress,
		IPv6PrefixLen:                  cfg.IPv6PrefixLen,
	}, refusal.New(log, refused, nil), log)
	tc := parts.tls.Clone()
	if ws == nil {
		tc.ClientAuth = tls.NoClientCert
	} else if tc.ClientAuth == tls.NoClientCert {
		// Devices attesting with X.509 over WebSocket present a certificate;
		// the service, not the handshake, checks it against the enrollments.
		tc.ClientAuth = tls.RequestClientCert
	}
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	if parts.tickets != nil {
		parts.tickets.Apply(tc)
	}
	tc.NextProtos = []string{"h2", "http/1.1"}
	a := &apiServer{
		srv: &http.Server{
			Handler:           h,
			TLSConfig:         tc,
			ReadHeaderTimeout: 10 * time.Second,
			// A request's body must arrive within ReadTimeout and its answer
			// be written within WriteTimeout of its headers; /backup sets its
			// own deadlines while it streams, and WebSocket upgrades clear
			// both (apiHandler).
			ReadTimeout:  cfg.APIReadTimeout,
			WriteTimeout: cfg.APIWriteTimeout,
			IdleTimeout:  2 * time.Minute,
			ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		addr: ln.Addr(),
		done: make(chan struct{}),
	}
	go func() {
		defer close(a.done)
		if err := a.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("service API stopped", "error", err)
		}
	}()
	return a, csPath, nil
}

// apiHandler routes the API listener's requests: WebSocket upgrades (any
// path) to MQTT, the operational endpoints by exact path, and everything
// else, untouched (no path cleaning), to the service API. /metrics is
// served here only when metricsHere (no metrics-addr of its own); otherwise
// the path goes to the service API, which answers 404.
func apiHandler(dps, backup, ws http.Handler, ready []api.Check, mx *metrics.Metrics, metricsHere bool, log *slog.Logger) http.Handler {
	health, readyz := api.Healthz(), api.Readyz(readyTimeout, ready...)
	var metricsH http.Handler
	if mx != nil {
		if metricsHere {
			metricsH = mx.Handler(log)
		}
		backup, dps = mx.Middleware(backup), mx.Middleware(dps)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case ws != nil && websocket.IsWebSocketUpgrade(r):
			// The connection becomes a long-lived MQTT connection: the HTTP
			// server's read and write deadlines must not end it (the broker
			// sets its own: CONNECT timeout, keep-alive, per-write timeout).
			rc := http.NewResponseController(w)
			_ = rc.SetReadDeadline(time.Time{})
			_ = rc.SetWriteDeadline(time.Time{})
			ws.ServeHTTP(w, r)
		case r.URL.Path == api.HealthPath:
			health.ServeHTTP(w, r)
		case r.URL.Path == api.ReadyPath:
			readyz.ServeHTTP(w, r)
		case r.URL.Path == metricsPath && metricsH != nil:
			metricsH.ServeHTTP(w, r)
		case r.URL.Path == wire.BackupPath:
			backup.ServeHTTP(w, r)
		default:
			dps.ServeHTTP(w, r)
		}
	})
}

// readyChecks are the conditions of /readyz: the store answers, every
// configured MQTT listener is bound, and serve is not shutting down.
func readyChecks(cfg config.Config, parts apiParts) []api.Check {
	want := map[string]string{
		broker.ListenerTCP: cfg.MQTTAddr,
		broker.ListenerTLS: cfg.MQTTSAddr,
		broker.ListenerWS:  cfg.WSSAddr,
	}
	return []api.Check{api.StoreCheck(parts.store), {Name: "listeners", Fn: func(context.Context) error {
		if parts.running != nil && !parts.running() {
			return errors.New("shutting down")
		}
		if parts.broker == nil {
			return errors.New("the MQTT broker is not running")
		}
		for name, addr := range want {
			if addr != "" && parts.broker.Addr(name) == nil {
				return fmt.Errorf("MQTT listener %s (%s) is not running", name, addr)
			}
		}
		return nil
	}}}
}

// shutdown stops the API, waiting for requests in flight until ctx ends.
func (a *apiServer) shutdown(ctx context.Context) error {
	err := a.srv.Shutdown(ctx)
	if err != nil {
		_ = a.srv.Close()
	}
	<-a.done
	return err
}
