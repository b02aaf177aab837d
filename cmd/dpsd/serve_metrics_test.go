package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// startedMetricsAddr returns the "metrics" field of the "dpsd started" line.
func startedMetricsAddr(t *testing.T, logs string) string {
	t.Helper()
	for _, line := range strings.Split(logs, "\n") {
		var rec struct {
			Msg     string `json:"msg"`
			Metrics string `json:"metrics"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "dpsd started" {
			return rec.Metrics
		}
	}
	t.Fatalf("no dpsd started line:\n%s", logs)
	return ""
}

// TestMetricsAddrMovesMetrics: with --metrics-addr, /metrics is served on
// that plain-HTTP listener (and nothing else is), and the public HTTPS
// listener answers /metrics with 404.
func TestMetricsAddrMovesMetrics(t *testing.T) {
	p := serveInProcess(t, "127.0.0.1:0", "-metrics-addr", "127.0.0.1:0")
	addr := startedMetricsAddr(t, p.logs.String())
	if addr == "" || addr == p.API {
		t.Fatalf("metrics address %q (api %q)", addr, p.API)
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	get := func(url string) (int, string) {
		t.Helper()
		res, err := hc.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	code, body := get("http://" + addr + metricsPath)
	if code != http.StatusOK || !strings.Contains(body, "dpsd_tpm_challenges_issued_total") || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("metrics listener /metrics: %d\n%.300s", code, body)
	}
	if code, _ := get("http://" + addr + "/enrollments/x?api-version=2021-10-01"); code != http.StatusNotFound {
		t.Fatalf("metrics listener serves other paths: %d", code)
	}
	if code, body := p.get(t, metricsPath); code != http.StatusNotFound || strings.Contains(body, "dpsd_") {
		t.Fatalf("HTTPS listener /metrics with metrics-addr set: %d\n%.300s", code, body)
	}
	// The rest of the HTTPS listener is unchanged.
	if code, _ := p.get(t, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d", code)
	}
}

// TestMetricsOnAPIByDefault: without --metrics-addr, /metrics stays on the
// HTTPS listener and the started line says so.
func TestMetricsOnAPIByDefault(t *testing.T) {
	p := serveInProcess(t, "127.0.0.1:0")
	if addr := startedMetricsAddr(t, p.logs.String()); addr != p.API {
		t.Fatalf("metrics address %q, want the API's %q", addr, p.API)
	}
	if code, body := p.get(t, metricsPath); code != http.StatusOK || !strings.Contains(body, "dpsd_") {
		t.Fatalf("/metrics %d", code)
	}
}
