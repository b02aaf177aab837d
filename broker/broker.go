// Package broker builds and runs the MQTT server of the provisioning
// service: an embedded mochi-mqtt server with the hook it is given (dpsd's
// is package hooks), TCP, TLS and WebSocket listeners behind per-address
// limits and a CONNECT deadline, and a lifecycle that stops accepting,
// finishes the requests in flight and then closes every connection without
// sending 3.1.1 clients the DISCONNECT packet a server must never send
// (MQTT 3.1.1 section 3.14: a DISCONNECT goes from client to server only).
// It knows nothing of provisioning: it imports neither hooks nor provision.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/tpmdps/dpsd/internal/ratelimit"
	"github.com/tpmdps/dpsd/internal/refusal"
)

// Listener names, for Addr.
const (
	ListenerTCP = "tcp"
	ListenerTLS = "tls"
	ListenerWS  = "ws"
)

// Defaults of Config and Limits.
const (
	DefaultConnectTimeout                       = 10 * time.Second
	DefaultWriteTimeout                         = 10 * time.Second
	DefaultMaxPacketSize                        = 96 << 10
	DefaultConnectionsPerAddress                = 1000
	DefaultConnectionsPerAddressPerMinute       = 1200
	DefaultConnectionBurstPerAddress            = 200
	defaultSysTopicInterval               int64 = 3600
)

// Limits bound the connections of clients. For counts a zero value takes
// the default and a negative value disables the limit. What an
// authenticated or restricted session may do is the hook's to limit
// (hooks.Limits). On a shared NAT address many devices come from one IP:
// size the per-address limits for it.
type Limits struct {
	// ConnectionsPerAddress caps concurrent connections from one IP address,
	// enforced before the TLS handshake.
	ConnectionsPerAddress int
	// ConnectionsPerAddressPerMinute and ConnectionBurstPerAddress rate-limit
	// new connections per IP address, before the TLS handshake.
	ConnectionsPerAddressPerMinute int
	ConnectionBurstPerAddress      int
	// MaxPacketSize bounds an MQTT packet (default 96 KiB).
	MaxPacketSize int
	// WriteTimeout bounds one write to a client (default 10 s).
	WriteTimeout time.Duration
	// IPv6PrefixLen is the IPv6 prefix that counts as one address for the
	// per-address limits (ratelimit.AddressKey); IPv4 addresses count one by
	// one. Zero takes ratelimit.DefaultIPv6PrefixLen (64).
	IPv6PrefixLen int
}

// Hook is the hook that authenticates clients and answers their requests
// (dpsd's is *hooks.Hook). The broker adds it to the mochi server first and
// drives the shutdown through it.
type Hook interface {
	mqtt.Hook
	// Drain refuses new CONNECTs and waits until every request taken in has
	// been answered, or ctx ends.
	Drain(ctx context.Context) error
	// CloseAll closes every connection the hook knows, without a DISCONNECT
	// packet (MQTT 3.1.1 section 3.14: DISCONNECT only goes from client to
	// server).
	CloseAll()
	// Sessions reports the live sessions and how many of them are restricted.
	Sessions() (total, restricted int)
}

// HookEnv is what the broker gives the constructor of its hook.
type HookEnv struct {
	// Server is the mochi server the hook is added to.
	Server *mqtt.Server
	// Refusals counts and logs connections refused by a per-address limit;
	// the broker's listeners report to it too.
	Refusals *refusal.Reporter
}

// NewHook builds the broker's hook for the server in env; New calls it once.
type NewHook func(env HookEnv) (Hook, error)

// Config configures a Broker. Empty addresses disable their listener.
type Config struct {
	// TCPAddr is the plain MQTT address, e.g. "127.0.0.1:1883".
	TCPAddr string
	// TLSAddr is the MQTT over TLS address, e.g. ":8883". Needs TLSConfig.
	TLSAddr string
	// WSAddr is the MQTT over WebSocket address (secure when TLSConfig is
	// set), any request path, sub-protocol mqtt.
	WSAddr string
	// TLSConfig holds the server certificate. Client certificates are
	// requested (not verified here: the service checks them against the
	// enrollments) unless ClientAuth is set; TLS 1.2 is the minimum.
	TLSConfig *tls.Config
	// SessionTickets, when set, keys (and rotates) the session tickets of
	// the broker's own copy of TLSConfig, so that the nodes of a cluster
	// resume each other's TLS sessions (internal/tlsticket).
	SessionTickets interface{ Apply(*tls.Config) }
	// ConnectTimeout is how long a new connection may take to send CONNECT
	// (TLS handshake included); default 10 s.
	ConnectTimeout time.Duration
	// Limits bound connections.
	Limits Limits
	// Logger receives broker logs (default: discard).
	Logger *slog.Logger
	// Metrics, if set, counts the connections refused by a per-address limit
	// (of the listeners, and of the hook through HookEnv.Refusals); nil
	// means off. Such connections are also logged, at warning level, once
	// per address per refusal.LogInterval.
	Metrics refusal.Counter
}

// Broker is the MQTT side of the service.
type Broker struct {
	cfg  Config
	log  *slog.Logger
	srv  *mqtt.Server
	hook Hook

	perAddr  *ratelimit.Counter
	rate     *ratelimit.Limiter
	refusals *refusal.Reporter // connections refused by a per-address limit

	mu       sync.Mutex
	started  bool
	shutdown bool
	guards   map[string]*guardListener
}

// New validates cfg and builds the server with the hook newHook builds;
// nothing is bound until Start.
func New(cfg Config, newHook NewHook) (*Broker, error) {
	if newHook == nil {
		return nil, errors.New("broker: no hook constructor")
	}
	if cfg.TCPAddr == "" && cfg.TLSAddr == "" && cfg.WSAddr == "" {
		return nil, errors.New("broker: no listener configured")
	}
	if cfg.TLSAddr != "" && cfg.TLSConfig == nil {
		return nil, errors.New("broker: TLSAddr needs TLSConfig")
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	lim := &cfg.Limits
	if lim.MaxPacketSize <= 0 {
		lim.MaxPacketSize = DefaultMaxPacketSize
	}
	if lim.WriteTimeout <= 0 {
		lim.WriteTimeout = DefaultWriteTimeout
	}
	if lim.ConnectionsPerAddress == 0 {
		lim.ConnectionsPerAddress = DefaultConnectionsPerAddress
	}
	if lim.ConnectionsPerAddressPerMinute == 0 {
		lim.ConnectionsPerAddressPerMinute = DefaultConnectionsPerAddressPerMinute
	}
	if lim.ConnectionBurstPerAddress == 0 {
		lim.ConnectionBurstPerAddress = DefaultConnectionBurstPerAddress
	}
	if lim.IPv6PrefixLen < 1 || lim.IPv6PrefixLen > 128 {
		lim.IPv6PrefixLen = ratelimit.DefaultIPv6PrefixLen
	}
	if cfg.TLSConfig != nil {
		tc := cfg.TLSConfig.Clone()
		if tc.MinVersion < tls.VersionTLS12 {
			tc.MinVersion = tls.VersionTLS12
		}
		if tc.ClientAuth == tls.NoClientCert {
			tc.ClientAuth = tls.RequestClientCert
		}
		if cfg.SessionTickets != nil {
			cfg.SessionTickets.Apply(tc)
		}
		cfg.TLSConfig = tc
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	// mochi warns about every keep-alive 0 client (the C SDK's) and every
	// refused connection; the hook logs what matters with a trackingId.
	opts := MQTTOptions(lim.MaxPacketSize, slog.New(minLevel{log.Handler(), slog.LevelError}).With("component", "mqtt"))
	opts.SysTopicResendInterval = defaultSysTopicInterval
	opts.InlineClient = false
	srv := mqtt.New(opts)
	refusals := refusal.New(log, cfg.Metrics, nil)
	h, err := newHook(HookEnv{Server: srv, Refusals: refusals})
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if h == nil {
		return nil, errors.New("broker: the hook constructor returned no hook")
	}
	if err := srv.AddHook(h, nil); err != nil {
		return nil, fmt.Errorf("broker: adding hook: %w", err)
	}
	if err := AddServerHooks(srv); err != nil {
		return nil, err
	}
	var rate *ratelimit.Limiter
	if lim.ConnectionsPerAddressPerMinute > 0 {
		rate = ratelimit.New(ratelimit.PerMinute(lim.ConnectionsPerAddressPerMinute), lim.ConnectionBurstPerAddress, nil)
	}
	return &Broker{
		cfg:      cfg,
		log:      log,
		srv:      srv,
		hook:     h,
		perAddr:  ratelimit.NewCounter(lim.ConnectionsPerAddress),
		rate:     rate,
		refusals: refusals,
		guards:   make(map[string]*guardListener),
	}, nil
}

// Start binds every configured listener and starts serving. When it returns
// nil, Addr reports the bound addresses.
func (b *Broker) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started {
		return errors.New("broker: already started")
	}
	b.started = true
	bind := func(name, addr string) (*guardListener, error) {
		ln, err := listenKeepAlive(ctx, addr, defaultKeepAlive())
		if err != nil {
			return nil, fmt.Errorf("broker: listen %s on %q: %w", name, addr, err)
		}
		g := &guardListener{
			Listener:       ln,
			name:           name,
			connectTimeout: b.cfg.ConnectTimeout,
			writeTimeout:   b.cfg.Limits.WriteTimeout,
			perAddr:        b.perAddr,
			rate:           b.rate,
			ipv6PrefixLen:  b.cfg.Limits.IPv6PrefixLen,
			refusals:       b.refusals,
			log:            b.log,
			conns:          make(map[*guardConn]struct{}),
		}
		b.guards[name] = g
		return g, nil
	}
	fail := func(err error) error {
		for name, g := range b.guards {
			_ = g.Close()
			delete(b.guards, name)
		}
		return err
	}
	var ls []listeners.Listener
	if b.cfg.TCPAddr != "" {
		g, err := bind(ListenerTCP, b.cfg.TCPAddr)
		if err != nil {
			return fail(err)
		}
		ls = append(ls, listeners.NewNet(ListenerTCP, g))
	}
	if b.cfg.TLSAddr != "" {
		g, err := bind(ListenerTLS, b.cfg.TLSAddr)
		if err != nil {
			return fail(err)
		}
		ls = append(ls, listeners.NewNet(ListenerTLS, newHandshakeListener(g, b.cfg.TLSConfig, ListenerTLS, b.log)))
	}
	if b.cfg.WSAddr != "" {
		g, err := bind(ListenerWS, b.cfg.WSAddr)
		if err != nil {
			return fail(err)
		}
		var ln net.Listener = g
		if b.cfg.TLSConfig != nil {
			ln = tls.NewListener(g, b.cfg.TLSConfig)
		}
		ls = append(ls, newWSListener(ListenerWS, ln, b.cfg.TLSConfig != nil, b.cfg.ConnectTimeout, int64(b.cfg.Limits.MaxPacketSize)+16))
	}
	for _, l := range ls {
		if err := b.srv.AddListener(l); err != nil {
			return fail(fmt.Errorf("broker: adding listener %s: %w", l.ID(), err))
		}
	}
	if err := b.srv.Serve(); err != nil {
		return fail(fmt.Errorf("broker: serve: %w", err))
	}
	for name, g := range b.guards {
		b.log.Info("listening", "listener", name, "address", g.Addr().String())
	}
	return nil
}

// Addr returns the bound address of the listener "tcp", "tls" or "ws", or
// nil when it is not running.
func (b *Broker) Addr(name string) net.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	if g, ok := b.guards[name]; ok {
		return g.Addr()
	}
	return nil
}

// Sessions reports live MQTT sessions and how many are restricted.
func (b *Broker) Sessions() (total, restricted int) { return b.hook.Sessions() }

// Shutdown stops accepting connections, waits (until ctx ends) for the
// requests in flight to be answered, then closes every connection and the
// server. It returns ctx's error if the wait was cut short; the server is
// closed either way.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.mu.Lock()
	if b.shutdown {
		b.mu.Unlock()
		return nil
	}
	b.shutdown = true
	started := b.started
	guards := make([]*guardListener, 0, len(b.guards))
	for _, g := range b.guards {
		guards = append(guards, g)
	}
	b.mu.Unlock()

	for _, g := range guards {
		_ = g.Close()
	}
	drainErr := b.hook.Drain(ctx)
	b.hook.CloseAll() // without DISCONNECT packets (MQTT 3.1.1 section 3.14)
	for _, g := range guards {
		g.closeAll()
	}
	if !started {
		return drainErr
	}
	done := make(chan struct{})
	go func() {
		_ = b.srv.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		if drainErr == nil {
			drainErr = fmt.Errorf("broker: closing server: %w", ctx.Err())
		}
	}
	b.log.Info("broker stopped")
	return drainErr
}

// minLevel drops records below a level (mochi is chatty at Info).
type minLevel struct {
	slog.Handler
	min slog.Level
}

// Enabled applies the floor before the wrapped handler's own level.
func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.Handler.Enabled(ctx, l)
}

// WithAttrs keeps the floor.
func (m minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{m.Handler.WithAttrs(a), m.min}
}

// WithGroup keeps the floor.
func (m minLevel) WithGroup(name string) slog.Handler {
	return minLevel{m.Handler.WithGroup(name), m.min}
}

// MQTTOptions returns the mochi server options dpsd runs with: capabilities
// tuned for provisioning (QoS 1 at most, no retain, no session state, small
// in-flight windows, maxPacketSize) and the per-connection buffer sizes. The
// load tool's bare broker uses them too, so that its baseline measures the
// same broker without the provisioning work.
//
// mochi tells MQTT 5 clients the limits in the CONNACK: Maximum QoS 1, above
// which they must not publish ([MQTT-3.2.2-9], [MQTT-3.2.2-11]; a SUBSCRIBE
// asking for QoS 2 is still accepted and granted QoS 1, [MQTT-3.2.2-10]),
// Retain Available 0 ([MQTT-3.2.2-14]: no retained publishes), Topic Alias
// Maximum 0 ([MQTT-3.2.2-18]: no topic aliases) and a session expiry of 0,
// so that no session state outlives its connection ([MQTT-3.1.2-23]). A
// 3.1.1 client asking for QoS 2 is granted QoS 1 as well ([MQTT-3.8.4-6]).
func MQTTOptions(maxPacketSize int, log *slog.Logger) *mqtt.Options {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(maxPacketSize)
	caps.MaximumQos = 1
	caps.RetainAvailable = 0
	caps.MaximumSessionExpiryInterval = 0 // no session state is kept
	caps.MaximumClientWritesPending = 16
	caps.ReceiveMaximum = 32
	caps.MaximumInflight = 64
	caps.TopicAliasMaximum = 0
	caps.SharedSubAvailable = 0
	caps.SubIDAvailable = 0
	caps.MaximumMessageExpiryInterval = 300
	return &mqtt.Options{
		Capabilities: caps,
		// mochi allocates the read buffer per connection for its whole life
		// (idle ones too) and the write buffer only while writes queue up.
		// 1 KiB holds a CONNECT and an RSA TPM register request in one read;
		// larger packets are read straight into their payload.
		ClientNetWriteBufferSize: 2048,
		ClientNetReadBufferSize:  1024,
		Logger:                   log,
	}
}
