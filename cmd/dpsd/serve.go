package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/tpmdps/dpsd/api"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/cmd/dpsd/internal/metrics"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/config"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/internal/tlsticket"
	"github.com/tpmdps/dpsd/provision"
	"github.com/tpmdps/dpsd/store"
)

// sweepInterval is how often expired operations are deleted.
const sweepInterval = time.Minute

const serveUsage = `Usage: dpsd serve [--print-connection-strings] [flags]

Runs the provisioning broker: devices connect over MQTT (plain, TLS or secure
WebSocket), authenticate with a SAS token, an X.509 certificate or the TPM
challenge, and are told which IoT hub to use.

With no flags it keeps its state in ./data (created 0700): the bbolt file
` + datadir.DBFile + `, ` + datadir.SecretsFile + ` (generated ID scope, TPM challenge secret and
service policy key) and a development CA (` + datadir.CACertFile + `) with a server certificate
for the tls-names, all reused on the next start. Devices using TLS must trust
` + datadir.CACertFile + ` unless tls-cert/tls-key name a certificate of your own.

The service API (enrollments, groups, registrations; the DPS service REST
shape) is served over HTTPS on api-addr with two generated policies:
provisioningserviceowner (all rights) and provisioningservicereader (read
only). Their connection strings are written to ` + datadir.ConnectionStringFile + `
and ` + datadir.ReadOnlyConnectionStringFile + ` in the data directory (0600), never
to the log; --print-connection-strings also prints them on stdout at start
(dpsd config connection-string prints one at any time). The admin commands
on this machine find the owner's, the CA and api-addr in the data directory
and the configuration by themselves; elsewhere they read
$DPSD_CONNECTION_STRING, $DPSD_ENDPOINT and $DPSD_CA_FILE.

Devices may ask for an operational certificate with a certificate signing
request in their register call; it is issued when their enrollment or group
has a credentialPolicyName. With issuer builtin (the default) dpsd signs it
with issuer-cert/issuer-key, or with a CA of its own that it generates in the
data directory (` + datadir.IssuingCACertFile + ` and ` + datadir.IssuingCAKeyFile + `, apart from the TLS
CA); dpsd ca export prints the chain MQTT brokers must trust.

Until hubs names your IoT hubs, devices whose enrollment names none are told
to use the placeholder hub.localdomain (a warning at start says so).

The same HTTPS listener (default :8443, unprivileged; forward 443 to it)
carries MQTT over WebSocket for any request that asks to upgrade
(/$iothub/websocket, / or any path), GET /backup (dpsd backup), and the
unauthenticated /metrics (Prometheus; on a plain-HTTP listener of its own
instead when metrics-addr is set), /healthz and /readyz. The start log's
wss names it, unless wss-addr gives WebSocket a listener of its own.
See docs/operations.md.

SIGTERM or SIGINT stops accepting connections, waits up to shutdown-timeout
for requests in flight, then closes the connections and the store.
`

// runServe is `dpsd serve`. It returns when ctx ends (a signal) or on error.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var out bytes.Buffer
	printCS, args := configFlag(args, "print-connection-strings")
	cfg, err := config.Load("dpsd serve", serveUsage, args, os.LookupEnv, &out)
	if code, done := settingsRead("dpsd serve", err, &out, stdout, stderr); done {
		return code
	}
	log := cfg.Logger(stderr)
	var csOut io.Writer // nil: the connection strings are not printed
	if printCS {
		csOut = stdout
	}
	if err := serve(ctx, cfg, log, csOut); err != nil {
		log.Error("dpsd serve failed", "error", err)
		return 1
	}
	return 0
}

// serve runs the server with cfg until ctx ends. When csOut is not nil
// (dpsd serve --print-connection-strings) it prints the service connection
// strings there once the API listens.
func serve(ctx context.Context, cfg config.Config, log *slog.Logger, csOut io.Writer) error {
	dir, err := openDataDir(cfg)
	if err != nil {
		return err
	}
	scope := cfg.IDScope
	if scope == "" {
		scope = dir.Secrets.IDScope
	}
	spec, err := parseStoreSpec(cfg.Store, cfg.DataDir)
	if err != nil {
		return err
	}
	st, err := openStore(ctx, spec, cfg, dir.Secrets.StoreKey, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("closing store", "error", err)
		}
	}()
	tpmRoots, err := loadTPMRoots(cfg.TPMRoots, log)
	if err != nil {
		return err
	}
	iss, issuerDesc, err := startIssuer(cfg, dir, scope, time.Now(), log)
	if err != nil {
		return err
	}
	mx := metrics.New()
	sst := mx.Store(st) // every store operation timed
	retryAfter := cfg.RetryAfter
	if retryAfter == 0 {
		retryAfter = -1 // provision: negative means "0 s"
	}
	clients, err := newOutboundClients(cfg)
	if err != nil {
		return err
	}
	custom, conns, handoff := handoffConfig(cfg, clients)
	// In a cluster the store records the single use of TPM challenges (the
	// timed wrapper hides the engine's optional interfaces).
	challenges, _ := st.(store.ChallengeRecorder)
	cluster, _ := st.(store.WindowCounter) // cluster-wide rate limits
	svc, err := provision.New(provision.Config{
		IDScope:           scope,
		Store:             sst,
		Challenges:        challenges,
		Observer:          mx,
		ChallengeSecret:   dir.Secrets.ChallengeSecret,
		ChallengeLifetime: cfg.ChallengeLifetime,
		SAS:               attest.SASPolicy{MaxLifetime: cfg.SASMaxLifetime},
		TPMRoots:          tpmRoots,
		Hubs:              cfg.Hubs,
		PlaceholderHubs:   placeholderHubs(cfg.Hubs),
		RetryAfter:        retryAfter,
		Custom:            custom,
		Connectors:        conns,
		Handoff:           handoff,
		Logger:            log,
		Issuer:            iss,
	})
	if err != nil {
		return fmt.Errorf("starting the provisioning service: %w", err)
	}
	// The outbox's workers: registrations that wait for a webhook or a hub.
	// They stop (handing their jobs back) before the store closes.
	outboxCtx, stopOutbox := context.WithCancel(context.Background())
	outboxDone := make(chan struct{})
	go func() {
		defer close(outboxDone)
		_ = svc.Run(outboxCtx)
	}()
	defer func() {
		stopOutbox()
		<-outboxDone
	}()
	var tlsCfg *tls.Config
	caFile := ""
	var tickets *tlsticket.Keys
	if cfg.NeedsTLS() {
		if tlsCfg, caFile, err = serverTLS(cfg, dir, log); err != nil {
			return err
		}
		// Session tickets keyed from the (shared) secrets: a device's
		// second connection resumes TLS on whichever node it reaches.
		if tickets, err = tlsticket.New(dir.Secrets.TicketSecret, nil); err != nil {
			return err
		}
		go tickets.Run(ctx)
	}
	hookLimits := hooks.Limits{
		RestrictedSessions:              cfg.RestrictedSessions,
		RestrictedSessionsPerAddress:    cfg.RestrictedPerAddress,
		RestrictedLifetime:              cfg.RestrictedLifetime,
		AuthFailuresPerAddressPerMinute: cfg.AuthFailureRate,
		AuthFailureBurstPerAddress:      cfg.AuthFailureBurst,
		ChallengesPerConnection:         cfg.ChallengesPerConnection,
		ChallengesPerAddressPerMinute:   cfg.ChallengeRatePerAddress,
		ChallengesPerMinute:             cfg.ChallengeRateTotal,
		RestrictedIdleTimeout:           cfg.RestrictedIdleTimeout,
		RequestsPerConnectionPerMinute:  cfg.RequestRatePerConn,
		PollsPerDevice:                  cfg.PollsPerDevice,
		PollWindow:                      cfg.PollWindow,
		RegistersPerDevice:              cfg.RegistersPerDevice,
		RegisterWindow:                  cfg.RegisterWindow,
		IPv6PrefixLen:                   cfg.IPv6PrefixLen,
	}
	b, err := broker.New(broker.Config{
		TCPAddr:        cfg.MQTTAddr,
		TLSAddr:        cfg.MQTTSAddr,
		WSAddr:         cfg.WSSAddr,
		TLSConfig:      tlsCfg,
		SessionTickets: tickets,
		ConnectTimeout: cfg.ConnectTimeout,
		Limits: broker.Limits{
			ConnectionsPerAddress:          cfg.ConnsPerAddress,
			ConnectionsPerAddressPerMinute: cfg.ConnRatePerAddress,
			IPv6PrefixLen:                  cfg.IPv6PrefixLen,
		},
		Logger:  log,
		Metrics: mx,
	}, func(env broker.HookEnv) (broker.Hook, error) {
		return hooks.New(hooks.Config{Service: svc, Server: env.Server, Limits: hookLimits,
			Logger: log, Metrics: mx, Refusals: env.Refusals, Cluster: cluster})
	})
	if err != nil {
		return err
	}
	mx.SetSources(b.Sessions, b.Connections)
	mx.SetPendingJobs(st.CountJobs)
	if err := b.Start(ctx); err != nil {
		return err
	}
	apiAddr, csFile := "off", ""
	var apiSrv *apiServer
	if cfg.APIAddr != "" {
		parts := apiParts{store: sst, broker: b, metrics: mx, tls: tlsCfg, tickets: tickets, running: func() bool { return ctx.Err() == nil }}
		if apiSrv, csFile, err = startAPI(ctx, cfg, dir, parts, log); err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			_ = b.Shutdown(sctx)
			cancel()
			return err
		}
		apiAddr = apiSrv.addr.String()
	}
	metricsAddr := apiAddr // /metrics is on the API listener unless metrics-addr is set
	var metricsSrv *metricsServer
	if cfg.MetricsAddr != "" {
		if metricsSrv, err = startMetrics(ctx, cfg.MetricsAddr, mx, log); err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			if apiSrv != nil {
				_ = apiSrv.shutdown(sctx)
			}
			_ = b.Shutdown(sctx)
			cancel()
			return err
		}
		metricsAddr = metricsSrv.addr.String()
	}
	addr := func(name string) string {
		if a := b.Addr(name); a != nil {
			return a.String()
		}
		return "off"
	}
	wssAddr := addr(broker.ListenerWS)
	if wssAddr == "off" && apiSrv != nil {
		wssAddr = apiAddr // the HTTPS listener carries MQTT over WebSocket
	}
	linked := linkedHubNames(ctx, st, log)
	log.Info("dpsd started",
		"idScope", scope,
		"dataDir", dir.Path,
		"store", spec.String(),
		"secrets", secretsPath(cfg, dir),
		"caCert", caFile,
		"mqtt", addr(broker.ListenerTCP),
		"mqtts", addr(broker.ListenerTLS),
		"wss", wssAddr,
		"api", apiAddr,
		"metrics", metricsAddr,
		"connectionStringFile", csFile,
		"hubs", cfg.Hubs,
		"linkedHubs", linked,
		"issuer", issuerDesc,
		"configFile", cfg.ConfigFile,
		"version", versionString())
	if dir.Created {
		log.Info("generated a new ID scope and secrets", "idScope", dir.Secrets.IDScope, "secrets", secretsPath(cfg, dir))
	}
	if placeholderHubs(cfg.Hubs) && len(linked) == 0 {
		log.Warn("hubs is still the placeholder "+config.PlaceholderHub+": devices whose enrollment names no hub are told to use a hub that does not exist; set --hubs or DPSD_HUBS to your IoT hubs, or link hubs (dpsd hub add)",
			"hubs", cfg.Hubs)
	}
	if csOut != nil {
		if apiSrv == nil {
			log.Warn("--print-connection-strings: the service API is off (api-addr is empty), so there is nothing to connect to")
		} else {
			printConnectionStrings(csOut, cfg.APIHostName, dir)
		}
	}

	ticker := time.NewTicker(sweepInterval)
	defer ticker.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case now := <-ticker.C:
			sctx, cancel := context.WithTimeout(ctx, sweepInterval)
			n, err := st.Sweep(sctx, now)
			cancel()
			if err != nil {
				log.Warn("store sweep failed", "error", err)
			} else if n > 0 {
				log.Debug("store sweep", "deleted", n)
			}
		}
	}

	log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if apiSrv != nil {
		if err := apiSrv.shutdown(sctx); err != nil {
			log.Warn("service API shutdown cut short", "error", err)
		}
	}
	if metricsSrv != nil {
		if err := metricsSrv.shutdown(sctx); err != nil {
			log.Warn("metrics listener shutdown cut short", "error", err)
		}
	}
	if err := b.Shutdown(sctx); err != nil {
		log.Warn("shutdown cut short", "error", err)
	}
	log.Info("dpsd stopped")
	return nil
}

// serverTLS loads the configured certificate, or the development CA's
// server certificate (issued or renewed as needed). It returns the path of
// the CA certificate devices should trust ("" for a configured certificate).
func serverTLS(cfg config.Config, dir *datadir.Dir, log *slog.Logger) (*tls.Config, string, error) {
	certFile, keyFile, caFile := cfg.TLSCert, cfg.TLSKey, ""
	if certFile == "" && cfg.SecretsDir != "" {
		// A cluster: every node presents the certificate of the secrets
		// directory (dpsd cluster init wrote a development one).
		certFile = filepath.Join(cfg.SecretsDir, datadir.ClusterTLSCertFile)
		keyFile = filepath.Join(cfg.SecretsDir, datadir.ClusterTLSKeyFile)
		if _, err := os.Stat(filepath.Join(cfg.SecretsDir, datadir.CACertFile)); err == nil {
			caFile = filepath.Join(cfg.SecretsDir, datadir.CACertFile)
		}
	}
	if certFile != "" {
		certPEM, err := os.ReadFile(certFile)
		if err != nil {
			return nil, "", fmt.Errorf("reading tls-cert: %w", err)
		}
		keyPEM, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, "", fmt.Errorf("reading tls-key: %w", err)
		}
		tc, err := devca.TLSConfig(certPEM, keyPEM)
		if err != nil {
			return nil, "", fmt.Errorf("tls-cert/tls-key: %w", err)
		}
		// Ask for a client certificate but verify none in TLS: X.509
		// attestation decides per enrollment (provision). startAPI decides
		// for the HTTPS listener on its own copy.
		tc.ClientAuth = tls.RequestClientCert
		return tc, caFile, nil
	}
	dev, err := dir.DevTLS(cfg.TLSNames, time.Now())
	if err != nil {
		return nil, "", fmt.Errorf("development TLS: %w", err)
	}
	if dev.Renewed {
		log.Info("issued a development server certificate", "names", cfg.TLSNames, "cert", dir.File(datadir.ServerCertFile))
	}
	tc, err := devca.TLSConfig(dev.CertPEM, dev.KeyPEM)
	if err != nil {
		return nil, "", fmt.Errorf("development TLS: %w", err)
	}
	tc.ClientAuth = tls.RequestClientCert // X.509 attestation, as above
	return tc, dir.File(datadir.CACertFile), nil
}

// linkedHubNames lists the linked hubs for the start log.
func linkedHubNames(ctx context.Context, st store.Store, log *slog.Logger) []string {
	hubs, err := st.ListLinkedHubs(ctx)
	if err != nil {
		log.Warn("reading the linked hubs failed", "error", err)
		return nil
	}
	names := make([]string, 0, len(hubs))
	for _, h := range hubs {
		names = append(names, h.Name)
	}
	return names
}

// secretsPath names where the secrets were read from, for logs.
func secretsPath(cfg config.Config, dir *datadir.Dir) string {
	if cfg.SecretsDir != "" {
		return filepath.Join(cfg.SecretsDir, datadir.SecretsFile)
	}
	return dir.File(datadir.SecretsFile)
}

// placeholderHubs reports whether hubs is still the default placeholder.
func placeholderHubs(hubs []string) bool {
	return len(hubs) == 1 && hubs[0] == config.PlaceholderHub
}

// printConnectionStrings shows the service policies' connection strings,
// which are also kept (0600) in the data directory. Only an explicit
// --print-connection-strings calls it: under docker run -t a terminal is
// the container log.
func printConnectionStrings(w io.Writer, hostName string, dir *datadir.Dir) {
	fmt.Fprintf(w, "Service API connection strings (also in %s and %s):\n  owner:     %s\n  read-only: %s\n",
		dir.File(datadir.ConnectionStringFile), dir.File(datadir.ReadOnlyConnectionStringFile),
		datadir.ConnectionString(hostName, api.DefaultPolicyName, dir.Secrets.ServicePolicyKey),
		datadir.ConnectionString(hostName, api.ReadOnlyPolicyName, dir.Secrets.ServiceReadPolicyKey))
}
