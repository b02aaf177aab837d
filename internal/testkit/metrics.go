package testkit

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Metrics records what the server's parts report through their observer
// interfaces, with the same method sets: hooks.Metrics (ConnectRefused,
// ConnectionRefused, Observe), broker's refusal.Counter (ConnectionRefused)
// and provision.Observer's ChallengeIssued, AuthFailed and
// EKCertificateChecked (a test that needs
// a whole provision.Observer embeds *Metrics and adds Registered). It keeps
// calls, not Prometheus series: the mapping of calls to series is tested in
// cmd/dpsd's metrics package. The zero value is ready; safe for concurrent
// use.
type Metrics struct {
	mu             sync.Mutex
	phases         []string       // "phase/status", in call order
	connectRefused []string       // reasons of ConnectRefused, in call order
	authFailed     []string       // reasons of AuthFailed, in call order
	challenges     int            // ChallengeIssued calls
	ekCerts        []string       // outcomes of EKCertificateChecked, in call order
	connsRefused   map[string]int // "listener/reason" of ConnectionRefused
}

// ConnectRefused records a CONNECT refused by the hook (hooks.Metrics).
func (m *Metrics) ConnectRefused(reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.connectRefused = append(m.connectRefused, reason)
}

// ConnectionRefused records a connection refused by a per-address limit
// (hooks.Metrics, refusal.Counter).
func (m *Metrics) ConnectionRefused(listener, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.connsRefused == nil {
		m.connsRefused = make(map[string]int)
	}
	m.connsRefused[listener+"/"+reason]++
}

// Observe records one answered request as "phase/status" (hooks.Metrics).
func (m *Metrics) Observe(phase string, status int, _ time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.phases = append(m.phases, phase+"/"+strconv.Itoa(status))
}

// ChallengeIssued records a TPM challenge (provision.Observer).
func (m *Metrics) ChallengeIssued(context.Context, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.challenges++
}

// AuthFailed records a refusal by the service (provision.Observer).
func (m *Metrics) AuthFailed(_ context.Context, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.authFailed = append(m.authFailed, reason)
}

// EKCertificateChecked records the outcome of an EK certificate check
// (provision.Observer).
func (m *Metrics) EKCertificateChecked(_ context.Context, outcome string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ekCerts = append(m.ekCerts, outcome)
}

// EKCertificates returns the EK certificate outcomes so far, in call order.
func (m *Metrics) EKCertificates() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.ekCerts)
}

// Phases returns the answered requests so far, "phase/status" in call order.
func (m *Metrics) Phases() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.phases)
}

// PhaseCount counts the answered requests of phase, whatever their status.
func (m *Metrics) PhaseCount(phase string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, p := range m.phases {
		if strings.HasPrefix(p, phase+"/") {
			n++
		}
	}
	return n
}

// PhaseStatusCount counts the answered requests of phase with status.
func (m *Metrics) PhaseStatusCount(phase string, status int) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	want := phase + "/" + strconv.Itoa(status)
	n := 0
	for _, p := range m.phases {
		if p == want {
			n++
		}
	}
	return n
}

// ConnectRefusals returns the hook's refusal reasons so far, in call order.
func (m *Metrics) ConnectRefusals() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.connectRefused)
}

// AuthFailures returns the service's refusal reasons so far, in call order.
func (m *Metrics) AuthFailures() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.authFailed)
}

// Challenges counts the TPM challenges issued so far.
func (m *Metrics) Challenges() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.challenges
}

// ConnectionsRefused returns a copy of the per-address refusals counted so
// far, keyed "listener/reason".
func (m *Metrics) ConnectionsRefused() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.connsRefused)
}
