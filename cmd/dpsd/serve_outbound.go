package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/hubconn"
	"github.com/tpmdps/dpsd/internal/config"
	"github.com/tpmdps/dpsd/provision"
)

// outboundClients are the HTTPS clients of every call dpsd makes: custom
// allocation webhooks, IoT hub registries and hand-off webhooks.
type outboundClients struct {
	// Default presents outbound-client-cert (if set) to servers that ask.
	Default *http.Client
	// Named present the certificates of outbound-client-certs, by name,
	// to the webhooks whose definition names one.
	Named map[string]*http.Client
}

// newOutboundClients builds the outbound clients. Each trusts the system's
// CAs and those of outbound-ca-file and bounds connection set-up; each
// call's own timeout bounds the rest.
func newOutboundClients(cfg config.Config) (outboundClients, error) {
	roots, err := outboundRoots(cfg)
	if err != nil {
		return outboundClients{}, err
	}
	var certs []tls.Certificate
	if cfg.OutboundClientCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.OutboundClientCert, cfg.OutboundClientKey)
		if err != nil {
			return outboundClients{}, fmt.Errorf("outbound-client-cert/outbound-client-key: %w", err)
		}
		certs = []tls.Certificate{cert}
	}
	named, err := namedOutboundClients(cfg, roots)
	if err != nil {
		return outboundClients{}, err
	}
	return outboundClients{Default: outboundHTTPClient(cfg, roots, certs), Named: named}, nil
}

// outboundRoots are the system's CAs plus outbound-ca-file's.
func outboundRoots(cfg config.Config) (*x509.CertPool, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if cfg.OutboundCAFile != "" {
		pemData, err := os.ReadFile(cfg.OutboundCAFile)
		if err != nil {
			return nil, fmt.Errorf("reading outbound-ca-file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("outbound-ca-file %s holds no PEM certificate", cfg.OutboundCAFile)
		}
	}
	return roots, nil
}

// namedOutboundClients reads outbound-client-certs: every NAME.pem with its
// NAME.key, the key readable by its owner only. nil when the setting is
// empty.
func namedOutboundClients(cfg config.Config, roots *x509.CertPool) (map[string]*http.Client, error) {
	dir := cfg.OutboundClientCerts
	if dir == "" {
		return nil, nil
	}
	certFiles, err := filepath.Glob(filepath.Join(dir, "*.pem"))
	if err != nil {
		return nil, fmt.Errorf("outbound-client-certs: %w", err)
	}
	if len(certFiles) == 0 {
		return nil, fmt.Errorf("outbound-client-certs %s holds no NAME.pem", dir)
	}
	named := make(map[string]*http.Client, len(certFiles))
	for _, certFile := range certFiles {
		name := strings.TrimSuffix(filepath.Base(certFile), ".pem")
		if !allocator.ValidClientCertificateName(name) {
			return nil, fmt.Errorf("outbound-client-certs: %q is not a certificate name (1-64 letters, digits, '.', '_' or '-')", name)
		}
		keyFile := filepath.Join(dir, name+".key")
		fi, err := os.Stat(keyFile)
		if err != nil {
			return nil, fmt.Errorf("outbound-client-certs: the key of %s: %w", name, err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("outbound-client-certs: %s is readable by others (mode %v): chmod 600 it", keyFile, fi.Mode().Perm())
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("outbound-client-certs: %s: %w", name, err)
		}
		named[name] = outboundHTTPClient(cfg, roots, []tls.Certificate{cert})
	}
	return named, nil
}

// outboundHTTPClient is one outbound client presenting certs (none: no
// client certificate) to servers that ask.
func outboundHTTPClient(cfg config.Config, roots *x509.CertPool, certs []tls.Certificate) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, Certificates: certs, MinVersion: tls.VersionTLS12},
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: cfg.HandoffWorkers,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &http.Client{Transport: tr}
}

// handoffConfig is the provisioning service's outside I/O: the webhook
// caller, the hub connectors and the outbox settings.
func handoffConfig(cfg config.Config, clients outboundClients) (allocator.Custom, hubconn.Factory, provision.HandoffConfig) {
	agent := versionString()
	custom := allocator.NewWebhook(allocator.WebhookOptions{Client: clients.Default, NamedClients: clients.Named,
		UserAgent: agent, DefaultTimeout: cfg.WebhookTimeout})
	conns := &hubconn.HTTPFactory{Client: clients.Default, UserAgent: agent, RequestTimeout: cfg.HubRequestTimeout}
	hc := provision.HandoffConfig{Workers: cfg.HandoffWorkers, MaxPending: cfg.HandoffMaxPending, Timeout: cfg.HandoffTimeout}
	return custom, conns, hc
}
