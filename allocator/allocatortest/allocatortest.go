// Package allocatortest runs custom allocation webhooks for tests: an
// HTTPS server on loopback (Server) that records every request it gets
// and answers with a handler of the test's choice, and Contoso, the logic
// of the cloud documentation's sample allocation function written in Go.
package allocatortest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/tpmdps/dpsd/allocator"
)

// Code is the function key the Server's URL carries (?code=...).
const Code = "test-function-key-0123456789"

// Server is a custom allocation webhook on 127.0.0.1 over TLS. Every
// request body is recorded before the handler runs.
type Server struct {
	// URL is https://127.0.0.1:PORT/api/HttpTrigger1?code=Code.
	URL string
	// Roots trusts the server's certificate; Client uses it.
	Roots  *x509.CertPool
	Client *http.Client
	// CertPEM is the server's self-signed certificate (to trust it from a
	// child process).
	CertPEM []byte

	srv     *httptest.Server
	mu      sync.Mutex
	bodies  [][]byte
	handler http.HandlerFunc
}

// NewServer starts a webhook answering with h, closed by t.Cleanup.
func NewServer(t testing.TB, h http.HandlerFunc) *Server {
	t.Helper()
	s := &Server{handler: h}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	s.URL = s.srv.URL + "/api/HttpTrigger1?code=" + Code
	s.Roots = x509.NewCertPool()
	cert := s.srv.Certificate()
	s.Roots.AddCert(cert)
	s.CertPEM = pemCert(cert.Raw)
	s.Client = s.srv.Client()
	return s
}

// SetHandler replaces the handler.
func (s *Server) SetHandler(h http.HandlerFunc) {
	s.mu.Lock()
	s.handler = h
	s.mu.Unlock()
}

// Requests returns the bodies received so far.
func (s *Server) Requests() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.bodies...)
}

// Count returns how many requests arrived.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.bodies)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.mu.Lock()
	s.bodies = append(s.bodies, body)
	h := s.handler
	s.mu.Unlock()
	if r.URL.Query().Get("code") != Code {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	h(w, r)
}

// JSON answers status with v as JSON.
func JSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Contoso is the logic of the cloud documentation's sample allocation
// function (tutorial-custom-allocation-policies), in Go: a registration id
// containing "-contoso-tstrsd-007" goes to the linked hub whose name
// contains "-toasters-" with the toaster twin, one containing
// "-contoso-hpsd-088" to the hub containing "-heatpumps-" with the heat
// pump twin; anything else, a missing registration id or no linked hubs
// is a 400 with the sample's message.
func Contoso(w http.ResponseWriter, r *http.Request) {
	var req allocator.Request
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, "malformed request", http.StatusBadRequest)
		return
	}
	regID := req.DeviceRuntimeContext.RegistrationID
	switch {
	case regID == "":
		http.Error(w, "Registration ID not provided for the device.", http.StatusBadRequest)
		return
	case req.LinkedHubs == nil:
		http.Error(w, "No hub group defined for the enrollment.", http.StatusBadRequest)
		return
	}
	var resp allocator.Response
	switch {
	case strings.Contains(regID, "-contoso-tstrsd-007"):
		resp.IoTHubHostName = hubContaining(req.LinkedHubs, "-toasters-")
		if resp.IoTHubHostName == "" {
			http.Error(w, "No toasters hub found for the enrollment.", http.StatusBadRequest)
			return
		}
		resp.InitialTwin = json.RawMessage(`{"properties":{"desired":{"state":"ready","darknessSetting":"medium"}},"tags":{"deviceType":"toaster"}}`)
	case strings.Contains(regID, "-contoso-hpsd-088"):
		resp.IoTHubHostName = hubContaining(req.LinkedHubs, "-heatpumps-")
		if resp.IoTHubHostName == "" {
			http.Error(w, "No heat pumps hub found for the enrollment.", http.StatusBadRequest)
			return
		}
		resp.InitialTwin = json.RawMessage(`{"properties":{"desired":{"state":"on","temperatureSetting":"65"}},"tags":{"deviceType":"heatpump"}}`)
	default:
		http.Error(w, "Unrecognized device registration.", http.StatusBadRequest)
		return
	}
	JSON(w, http.StatusOK, resp)
}

// hubContaining returns the first hub whose name contains s.
func hubContaining(hubs []string, s string) string {
	for _, h := range hubs {
		if strings.Contains(h, s) {
			return h
		}
	}
	return ""
}
