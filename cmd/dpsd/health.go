package main

// dpsd health [--url URL] [--ca-file FILE] [--timeout D]

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/api"
	"github.com/tpmdps/dpsd/internal/config"
)

const healthUsage = `Usage: dpsd health [--url URL] [--ca-file FILE] [--timeout D]

Probes a running dpsd (for a container HEALTHCHECK: no shell or curl
needed) and exits 0 when it answers 200, 1 otherwise. The default URL is
https://127.0.0.1:{port of api-addr}/readyz, the port taken from
$DPSD_API_ADDR or the default api-addr. The server certificate is checked
against --ca-file when given; without it, a loopback URL is probed without
verifying the certificate (nothing secret is sent) and any other URL is
verified against the system roots.

Flags:
`

// runHealth is `dpsd health`.
func runHealth(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dpsd health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("url", healthDefaultURL(os.LookupEnv), "URL to probe")
	caFile := fs.String("ca-file", "", "PEM file of CA certificates to verify the server with")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	fs.Usage = func() {
		fmt.Fprint(stderr, healthUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	status, body, err := probeHealth(ctx, *target, *caFile, *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "dpsd health: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%d %s\n", status, strings.TrimSpace(body))
	if status != http.StatusOK {
		return 1
	}
	return 0
}

// healthDefaultURL is the readiness URL on loopback at api-addr's port.
func healthDefaultURL(lookupEnv func(string) (string, bool)) string {
	addr := config.Default().APIAddr
	if v, ok := lookupEnv(config.EnvPrefix + "API_ADDR"); ok && strings.TrimSpace(v) != "" {
		addr = strings.TrimSpace(v)
	}
	port := "8443"
	if _, p, err := net.SplitHostPort(addr); err == nil && p != "" && p != "0" {
		port = p
	}
	return "https://" + net.JoinHostPort("127.0.0.1", port) + api.ReadyPath
}

// probeHealth GETs target and returns the status and the start of the body.
func probeHealth(ctx context.Context, target, caFile string, timeout time.Duration) (int, string, error) {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return 0, "", fmt.Errorf("--url %q is not an http(s) URL", target)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case caFile != "":
		pemBytes, err := os.ReadFile(caFile)
		if err != nil {
			return 0, "", fmt.Errorf("reading --ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return 0, "", fmt.Errorf("--ca-file %s holds no PEM certificate", caFile)
		}
		tc.RootCAs = pool
	case isLoopbackHost(u.Hostname()):
		tc.InsecureSkipVerify = true // loopback only: the probe sends nothing secret
	}
	hc := &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{TLSClientConfig: tc, Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, "", fmt.Errorf("building the request: %w", err)
	}
	res, err := hc.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("probe: %w", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 4<<10))
	return res.StatusCode, string(b), nil
}

// isLoopbackHost reports whether host is localhost or a loopback IP.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
