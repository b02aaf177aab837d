package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/hubconn"
	"github.com/tpmdps/dpsd/internal/config"
	"github.com/tpmdps/dpsd/provision"
)

// outboundClient is the HTTPS client of every call dpsd makes: custom
// allocation webhooks, IoT hub registries and hand-off webhooks. It trusts
// the system's CAs and those of outbound-ca-file, presents
// outbound-client-cert to servers that ask for one, and bounds connection
// set-up; each call's own timeout bounds the rest.
func outboundClient(cfg config.Config) (*http.Client, error) {
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
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if cfg.OutboundClientCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.OutboundClientCert, cfg.OutboundClientKey)
		if err != nil {
			return nil, fmt.Errorf("outbound-client-cert/outbound-client-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	tr := &http.Transport{
		TLSClientConfig:     tc,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: cfg.HandoffWorkers,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &http.Client{Transport: tr}, nil
}

// handoffConfig is the provisioning service's outside I/O: the webhook
// caller, the hub connectors and the outbox settings.
func handoffConfig(cfg config.Config, client *http.Client) (allocator.Custom, hubconn.Factory, provision.HandoffConfig) {
	agent := versionString()
	custom := allocator.NewWebhook(allocator.WebhookOptions{Client: client, UserAgent: agent, DefaultTimeout: cfg.WebhookTimeout})
	conns := &hubconn.HTTPFactory{Client: client, UserAgent: agent, RequestTimeout: cfg.HubRequestTimeout}
	hc := provision.HandoffConfig{Workers: cfg.HandoffWorkers, MaxPending: cfg.HandoffMaxPending, Timeout: cfg.HandoffTimeout}
	return custom, conns, hc
}
