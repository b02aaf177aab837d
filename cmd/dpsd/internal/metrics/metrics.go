// Package metrics holds the server's Prometheus metrics: one Metrics value
// with its own registry (never prometheus.DefaultRegisterer), handed to the
// parts it observes through their optional hooks: provision.Config.Observer,
// hooks.Config.Metrics (hooks.Metrics), broker.Config.Metrics (the
// refusal.Counter part of it), a store.Store wrapper and an HTTP
// middleware. It serves the text exposition format at /metrics.
//
// It is wiring of dpsd serve, and lives beside it: it implements the
// observer interfaces those packages declare, so it imports them, and none
// of them imports it.
package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/provision"
)

// Namespace prefixes every metric name.
const Namespace = "dpsd"

// PhaseAPI is the phase label of service API (HTTPS) requests.
const PhaseAPI = "api"

// Metrics is the set of the server's metrics. It implements
// provision.Observer and hooks.Metrics. Safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	registrations *prometheus.CounterVec   // outcome, attestation
	certificates  *prometheus.CounterVec   // attestation
	challenges    prometheus.Counter       //
	authFailures  *prometheus.CounterVec   // reason
	ekCerts       *prometheus.CounterVec   // outcome
	connRefused   *prometheus.CounterVec   // listener, reason
	requestTime   *prometheus.HistogramVec // phase
	responses     *prometheus.CounterVec   // phase, code
	storeTime     *prometheus.HistogramVec // op
	storeErrors   *prometheus.CounterVec   // op
	handoffCalls  *prometheus.CounterVec   // step, outcome
	handoffTime   *prometheus.HistogramVec // step

	sessionsDesc *prometheus.Desc
	connsDesc    *prometheus.Desc
	pendingDesc  *prometheus.Desc

	mu       sync.Mutex
	sessions func() (total, restricted int)
	conns    func() map[string]int
	pending  func(context.Context) (int, error)
}

var (
	_ provision.Observer        = (*Metrics)(nil)
	_ provision.HandoffObserver = (*Metrics)(nil)
	_ hooks.Metrics             = (*Metrics)(nil)
)

// New creates the metrics in a new registry, with the Go runtime and
// process collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "registrations_total",
			Help: "Registration outcomes recorded, by outcome (assigned, failed, disabled) and attestation type (tpm, symmetricKey, x509).",
		}, []string{"outcome", "attestation"}),
		certificates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "certificates_issued_total",
			Help: "Operational certificates issued from a device's certificate signing request, by attestation type (tpm, symmetricKey, x509).",
		}, []string{"attestation"}),
		challenges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "tpm_challenges_issued_total",
			Help: "TPM challenges (401 answers with an activation blob) issued.",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "auth_failures_total",
			Help: "Refused device CONNECTs, by reason.",
		}, []string{"reason"}),
		ekCerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "ek_certificates_total",
			Help: "EK certificates sent with TPM challenge requests and checked, by outcome (valid, malformed, key_mismatch, untrusted, expired, revoked): decided by the certificate and the configured TPM roots alone, never by the registration id.",
		}, []string{"outcome"}),
		connRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "connections_refused_total",
			Help: "Connections refused by a per-address limit, by listener and reason (per_address_cap, per_address_rate, ...).",
		}, []string{"listener", "reason"}),
		requestTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "request_duration_seconds",
			Help:    "Time to answer a request, by phase: connect (authentication), challenge, register, poll (MQTT) and api (HTTPS service API).",
			Buckets: prometheus.DefBuckets,
		}, []string{"phase"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "responses_total",
			Help: "Answers by phase and status code (0: an accepted CONNECT).",
		}, []string{"phase", "code"}),
		storeTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "store_operation_duration_seconds",
			Help:    "Time of one store operation, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
		}, []string{"op"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "store_errors_total",
			Help: "Store operations that failed (not counting not-found and etag mismatches), by operation.",
		}, []string{"op"}),
		handoffCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "handoff_calls_total",
			Help: "Outside calls of registrations in the outbox, by step (webhook: custom allocation; hub: registering the device in its hub) and outcome (ok, retry, failed).",
		}, []string{"step", "outcome"}),
		handoffTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "handoff_call_duration_seconds",
			Help:    "Time of one outside call of a registration in the outbox, by step.",
			Buckets: prometheus.DefBuckets,
		}, []string{"step"}),
		pendingDesc: prometheus.NewDesc(Namespace+"_handoff_pending_jobs",
			"Registrations waiting in the outbox for a webhook or a hub (every node's, from the store).", nil, nil),
		sessionsDesc: prometheus.NewDesc(Namespace+"_mqtt_sessions",
			"Live MQTT sessions by kind: authenticated, or restricted (TPM challenge).", []string{"kind"}, nil),
		connsDesc: prometheus.NewDesc(Namespace+"_connections",
			"Open device connections by listener (CONNECT sent or not).", []string{"listener"}, nil),
	}
	m.reg.MustRegister(m.registrations, m.certificates, m.challenges, m.authFailures, m.ekCerts, m.connRefused, m.requestTime, m.responses,
		m.storeTime, m.storeErrors, m.handoffCalls, m.handoffTime, gauges{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry holding the metrics (to gather or add to).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus exposition formats.
func (m *Metrics) Handler(log *slog.Logger) http.Handler {
	opts := promhttp.HandlerOpts{Registry: m.reg, MaxRequestsInFlight: 4, Timeout: 10 * time.Second}
	if log != nil {
		opts.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	}
	return promhttp.HandlerFor(m.reg, opts)
}

// SetSources names the functions that report live sessions and open
// connections (broker.Broker's Sessions and Connections); they are called
// at each scrape. Either may be nil.
func (m *Metrics) SetSources(sessions func() (total, restricted int), conns func() map[string]int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sessions, m.conns = sessions, conns
}

// SetPendingJobs names the function that counts the outbox's jobs
// (store.Store's CountJobs), called at each scrape.
func (m *Metrics) SetPendingJobs(count func(context.Context) (int, error)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pending = count
}

// HandoffCall counts one outside call of the outbox (provision.HandoffObserver).
func (m *Metrics) HandoffCall(_ context.Context, step, outcome string, elapsed time.Duration) {
	m.handoffCalls.WithLabelValues(step, outcome).Inc()
	m.handoffTime.WithLabelValues(step).Observe(elapsed.Seconds())
}

// Registered counts a registration outcome and the certificate issued
// with it, if any (provision.Observer).
func (m *Metrics) Registered(_ context.Context, ev provision.RegistrationEvent) {
	m.registrations.WithLabelValues(ev.Status, ev.AttestationType).Inc()
	if ev.CertificateSerial != "" {
		m.certificates.WithLabelValues(ev.AttestationType).Inc()
	}
}

// ChallengeIssued counts a TPM challenge (provision.Observer).
func (m *Metrics) ChallengeIssued(context.Context, string) { m.challenges.Inc() }

// AuthFailed counts a refusal by the service (provision.Observer).
func (m *Metrics) AuthFailed(_ context.Context, reason string) {
	m.authFailures.WithLabelValues(reason).Inc()
}

// EKCertificateChecked counts an EK certificate check by outcome
// (provision.Observer).
func (m *Metrics) EKCertificateChecked(_ context.Context, outcome string) {
	m.ekCerts.WithLabelValues(outcome).Inc()
}

// ConnectRefused counts a refusal by the broker hook (hooks.Metrics).
func (m *Metrics) ConnectRefused(reason string) { m.authFailures.WithLabelValues(reason).Inc() }

// ConnectionRefused counts a connection refused by a per-address limit
// (hooks.Metrics, refusal.Counter).
func (m *Metrics) ConnectionRefused(listener, reason string) {
	m.connRefused.WithLabelValues(listener, reason).Inc()
}

// Observe records one request's time and status (hooks.Metrics).
func (m *Metrics) Observe(phase string, status int, elapsed time.Duration) {
	m.requestTime.WithLabelValues(phase).Observe(elapsed.Seconds())
	m.responses.WithLabelValues(phase, strconv.Itoa(status)).Inc()
}

// Middleware times every request of next as phase PhaseAPI.
func (m *Metrics) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		m.Observe(PhaseAPI, sw.status, time.Since(start))
	})
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

// WriteHeader records the status.
func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

// Flush passes flushes on (streamed answers such as a backup).
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// gauges collects the values read at scrape time from the sources.
type gauges struct{ m *Metrics }

// Describe sends the gauge descriptors.
func (g gauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.m.sessionsDesc
	ch <- g.m.connsDesc
	ch <- g.m.pendingDesc
}

// Collect reads the sources.
func (g gauges) Collect(ch chan<- prometheus.Metric) {
	g.m.mu.Lock()
	sessions, conns, pending := g.m.sessions, g.m.conns, g.m.pending
	g.m.mu.Unlock()
	if pending != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		n, err := pending(ctx)
		cancel()
		if err == nil {
			ch <- prometheus.MustNewConstMetric(g.m.pendingDesc, prometheus.GaugeValue, float64(n))
		}
	}
	if sessions != nil {
		total, restricted := sessions()
		ch <- prometheus.MustNewConstMetric(g.m.sessionsDesc, prometheus.GaugeValue, float64(total-restricted), "authenticated")
		ch <- prometheus.MustNewConstMetric(g.m.sessionsDesc, prometheus.GaugeValue, float64(restricted), "restricted")
	}
	if conns != nil {
		for name, n := range conns() {
			ch <- prometheus.MustNewConstMetric(g.m.connsDesc, prometheus.GaugeValue, float64(n), name)
		}
	}
}
