package allocator_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/internal/devca"
)

// TestWebhookNamedClientCertificate: a definition that names a client
// certificate is called with that name's client, and the webhook (which
// requires mutual TLS) sees its certificate; a name the server does not
// have is a final 400207 that says so, with no call made; a definition
// that names none uses the default client.
func TestWebhookNamedClientCertificate(t *testing.T) {
	now := time.Now()
	clientCA, err := devca.NewRootCA("webhook clients", now, time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(clientCA.Cert)
	var calls atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		cn := r.TLS.PeerCertificates[0].Subject.CommonName
		_ = json.NewEncoder(w).Encode(map[string]any{"iotHubHostName": cn + ".azure-devices.net"})
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	clientFor := func(cn string) *http.Client {
		c := srv.Client()
		tr := c.Transport.(*http.Transport).Clone()
		if cn != "" {
			certPEM, keyPEM, err := clientCA.IssueClient(cn, now.Add(-time.Minute), now.Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			cert, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
		}
		return &http.Client{Transport: tr}
	}
	w := allocator.NewWebhook(allocator.WebhookOptions{
		Client:       clientFor(""),
		NamedClients: map[string]*http.Client{"tenant-a": clientFor("tenant-a"), "tenant-b": clientFor("tenant-b")},
	})
	req := &allocator.Request{DeviceRuntimeContext: allocator.DeviceRuntimeContext{RegistrationID: "dev-1", SymmetricKey: &struct{}{}}}
	ctx := context.Background()

	for _, name := range []string{"tenant-a", "tenant-b"} {
		r, err := w.Allocate(ctx, allocator.Definition{URL: srv.URL, ClientCertificate: name}, req)
		if err != nil || r.IoTHubHostName != name+".azure-devices.net" {
			t.Fatalf("%s: %+v, %v; want the webhook to see the %s certificate", name, r, err, name)
		}
	}

	before := calls.Load()
	_, err = w.Allocate(ctx, allocator.Definition{URL: srv.URL, ClientCertificate: "tenant-c"}, req)
	var ae *allocator.Error
	if !errors.As(err, &ae) || ae.Retryable || ae.ErrorCode != allocator.ErrorCodeFailed || !strings.Contains(ae.Message, `"tenant-c"`) {
		t.Fatalf("unknown certificate name: %v, want a final 400207 naming it", err)
	}
	if calls.Load() != before {
		t.Fatal("the webhook was called without the certificate its definition names")
	}

	// No name: the default client, which has no certificate, fails the
	// handshake: retryable, as any webhook that cannot be reached.
	_, err = w.Allocate(ctx, allocator.Definition{URL: srv.URL}, req)
	if !errors.As(err, &ae) || !ae.Retryable {
		t.Fatalf("without a client certificate: %v, want a retryable failure", err)
	}
}

func TestValidClientCertificateName(t *testing.T) {
	for name, want := range map[string]bool{
		"tenant-a": true, "a.b_c-1": true, strings.Repeat("x", 64): true,
		"": false, ".hidden": false, "a/b": false, "a b": false, strings.Repeat("x", 65): false, "é": false,
	} {
		if got := allocator.ValidClientCertificateName(name); got != want {
			t.Errorf("ValidClientCertificateName(%q) = %v, want %v", name, got, want)
		}
	}
}
