package device

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"
)

// Version is this client's version, sent in the CONNECT username as
// ClientVersion=dpsd-device/{Version}.
const Version = "0.1.0"

// DefaultAPIVersion is the DPS api-version sent when Config.APIVersion is empty.
const DefaultAPIVersion = "2019-03-31"

// DefaultTimeout bounds a whole Provision when Config.Timeout is zero.
const DefaultTimeout = 90 * time.Second

// DefaultPollInterval is the wait between polls when an answer carries no retry-after.
const DefaultPollInterval = 2 * time.Second

// WebSocketPath is the request path of MQTT over WebSocket.
const WebSocketPath = "/$iothub/websocket"

// ErrInvalidConfig is returned (wrapped) by Provision for an unusable Config.
var ErrInvalidConfig = errors.New("device: invalid config")

// Transport is how the device reaches the broker.
type Transport int

// Transports. The zero value is MQTT over TLS.
const (
	// TransportTLS is MQTT over TLS (default port 8883).
	TransportTLS Transport = iota
	// TransportTCP is MQTT over plain TCP (default port 1883), for local use and tests.
	TransportTCP
	// TransportWebSocket is MQTT over secure WebSocket (default port 443, path WebSocketPath).
	TransportWebSocket
)

// String returns "tls", "tcp" or "wss".
func (t Transport) String() string {
	switch t {
	case TransportTLS:
		return "tls"
	case TransportTCP:
		return "tcp"
	case TransportWebSocket:
		return "wss"
	}
	return "transport(" + strconv.Itoa(int(t)) + ")"
}

// Config is one Provision's settings. Only Host, IDScope and Attestation are
// required (and RegistrationID unless the Attestation provides one).
type Config struct {
	// Host is the broker's host name (also the TLS server name).
	Host string
	// Port defaults by Transport: 8883, 1883 or 443.
	Port int
	// IDScope is the provisioning service's scope.
	IDScope string
	// RegistrationID names the device; default from the Attestation (a TPM's EK).
	RegistrationID string
	// Transport defaults to TransportTLS.
	Transport Transport
	// TLSConfig, when set, is used (cloned) as is for TLS and WebSocket.
	TLSConfig *tls.Config
	// RootCAs verifies the broker; nil uses CAFile, else the system roots.
	RootCAs *x509.CertPool
	// CAFile is a PEM file of CA certificates, used when RootCAs is nil.
	CAFile string
	// Attestation proves the device's identity (TPM, symmetric key, ...).
	Attestation Attestation
	// APIVersion defaults to DefaultAPIVersion.
	APIVersion string
	// ClientVersion is the agent string in the username (URL-encoded there);
	// default "dpsd-device/" + Version.
	ClientVersion string
	// Payload is sent as the register body's "payload" when not nil; it must be valid JSON.
	Payload json.RawMessage
	// CertificateKey, when set, asks the service for an operational
	// certificate for this key: a certificate signing request (subject CN =
	// the registration id) that it signs goes in the authenticated register
	// request, as "csr" (or "clientCertificateCsr" when APIVersion is
	// CSRAPIVersion2021), and Result.CertificateChain holds what was issued.
	// APIVersion then defaults to CSRAPIVersion. A TPM-held key
	// (devtpm.SigningKey) never leaves the TPM; a software key is the
	// caller's to keep.
	CertificateKey crypto.Signer
	// Timeout bounds the whole Provision (default DefaultTimeout); the ctx
	// passed to Provision bounds it too.
	Timeout time.Duration
	// ConnectTimeout bounds one MQTT connection handshake (default 30 s).
	ConnectTimeout time.Duration
	// PollInterval is the wait between polls when no retry-after is given
	// (default DefaultPollInterval).
	PollInterval time.Duration
	// Backoff governs retries after 429 and 5xx answers.
	Backoff Backoff
	// Logger receives each protocol step at Debug level (never secrets);
	// default discards.
	Logger *slog.Logger
	// OnPhase, if set, is called as each Phase begins (progress display, tests).
	OnPhase func(Phase)
	// Now is the clock for token expiries (default time.Now).
	Now func() time.Time
	// Sleep waits between retries and polls (default a timer honouring ctx).
	Sleep func(ctx context.Context, d time.Duration) error
}

// resolved is a validated Config with defaults applied.
type resolved struct {
	Config
	addr string
	tls  *tls.Config // nil for TransportTCP
}

func (c Config) resolve() (*resolved, error) {
	if c.Host == "" {
		return nil, fmt.Errorf("%w: Host is empty", ErrInvalidConfig)
	}
	if c.IDScope == "" {
		return nil, fmt.Errorf("%w: IDScope is empty", ErrInvalidConfig)
	}
	if c.Attestation == nil {
		return nil, fmt.Errorf("%w: Attestation is nil", ErrInvalidConfig)
	}
	if c.Payload != nil && !json.Valid(c.Payload) {
		return nil, fmt.Errorf("%w: Payload is not valid JSON", ErrInvalidConfig)
	}
	if c.Port == 0 {
		switch c.Transport {
		case TransportTCP:
			c.Port = 1883
		case TransportWebSocket:
			c.Port = 443
		default:
			c.Port = 8883
		}
	}
	if c.Port < 0 || c.Port > 65535 {
		return nil, fmt.Errorf("%w: port %d", ErrInvalidConfig, c.Port)
	}
	if c.Transport < TransportTLS || c.Transport > TransportWebSocket {
		return nil, fmt.Errorf("%w: unknown %v", ErrInvalidConfig, c.Transport)
	}
	if c.APIVersion == "" {
		c.APIVersion = DefaultAPIVersion
		if c.CertificateKey != nil {
			c.APIVersion = CSRAPIVersion
		}
	}
	if c.ClientVersion == "" {
		c.ClientVersion = "dpsd-device/" + Version
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 30 * time.Second
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	c.Backoff = c.Backoff.withDefaults()
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Sleep == nil {
		c.Sleep = sleepCtx
	}
	r := &resolved{Config: c, addr: net.JoinHostPort(c.Host, strconv.Itoa(c.Port))}
	if c.Transport != TransportTCP {
		t, err := c.tlsConfig()
		if err != nil {
			return nil, err
		}
		r.tls = t
	}
	return r, nil
}

func (c Config) tlsConfig() (*tls.Config, error) {
	if c.TLSConfig != nil {
		t := c.TLSConfig.Clone()
		if t.ServerName == "" {
			t.ServerName = c.Host
		}
		return t, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.Host, RootCAs: c.RootCAs}
	if t.RootCAs == nil && c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: read CA file: %w", ErrInvalidConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: no PEM certificates in %s", ErrInvalidConfig, c.CAFile)
		}
		t.RootCAs = pool
	}
	return t, nil
}
