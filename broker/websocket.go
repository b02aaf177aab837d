package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/tpmdps/dpsd/internal/ratelimit"
	"github.com/tpmdps/dpsd/internal/refusal"
)

// wsListener serves MQTT over (secure) WebSocket on any request path. mochi's
// own listeners.Websocket binds its address itself (so it cannot run behind
// guardListener, report a port-0 address or expose the TLS state for X.509)
// and matches the sub-protocol `mqtt` case-sensitively; docs/protocol.md asks for
// a case-insensitive match. MQTT 3.1.1 and 5 section 6 ask the client to
// offer "mqtt" ([MQTT-6.0.0-3]) and the server to select exactly "mqtt"
// ([MQTT-6.0.0-4]); this listener also accepts a client that offers none
// and answers with the client's own spelling, which is the one value a
// WebSocket server may select (RFC 6455 section 4.2.2): a departure for the
// sake of clients that spell it otherwise.
type wsListener struct {
	id             string
	ln             net.Listener // guardListener, TLS-wrapped when secure
	connectTimeout time.Duration
	readLimit      int64
	secure         bool
	log            *slog.Logger

	mu        sync.Mutex
	srv       *http.Server
	establish listeners.EstablishFn
}

// newWSListener serves ln (already TLS-wrapped for wss).
func newWSListener(id string, ln net.Listener, secure bool, connectTimeout time.Duration, readLimit int64) *wsListener {
	return &wsListener{id: id, ln: ln, secure: secure, connectTimeout: connectTimeout, readLimit: readLimit}
}

// ID returns the listener id.
func (l *wsListener) ID() string { return l.id }

// Address returns the bound address.
func (l *wsListener) Address() string { return l.ln.Addr().String() }

// Protocol names the transport.
func (l *wsListener) Protocol() string {
	if l.secure {
		return "wss"
	}
	return "ws"
}

// Init prepares the HTTP server.
func (l *wsListener) Init(log *slog.Logger) error {
	l.log = log
	l.mu.Lock()
	defer l.mu.Unlock()
	l.srv = &http.Server{
		Handler:           http.HandlerFunc(l.handle),
		ReadHeaderTimeout: l.connectTimeout,
		ErrorLog:          nil,
	}
	return nil
}

// Serve accepts WebSocket upgrades until Close.
func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	l.establish = establish
	srv := l.srv
	l.mu.Unlock()
	if err := srv.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		l.log.Error("websocket listener stopped", "error", err)
	}
}

// Close stops the HTTP server (upgraded connections are closed by closeClients).
func (l *wsListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	srv := l.srv
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	closeClients(l.id)
}

// pickSubprotocol returns the client's spelling of `mqtt` (any case), or ""
// when the client offered none.
func pickSubprotocol(r *http.Request) (string, bool) {
	offered := websocket.Subprotocols(r)
	if len(offered) == 0 {
		return "", true
	}
	for _, p := range offered {
		if strings.EqualFold(p, "mqtt") {
			return p, true
		}
	}
	return "", false
}

// upgradeMQTT answers a WebSocket upgrade on any path with the client's
// spelling of the sub-protocol mqtt (or none when none was offered). It
// returns nil when it has answered with an error instead.
func upgradeMQTT(w http.ResponseWriter, r *http.Request, readLimit int64) *websocket.Conn {
	proto, ok := pickSubprotocol(r)
	if !ok {
		http.Error(w, "sub-protocol mqtt required", http.StatusBadRequest)
		return nil
	}
	var hdr http.Header
	if proto != "" {
		hdr = http.Header{"Sec-Websocket-Protocol": {proto}}
	}
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	c, err := up.Upgrade(w, r, hdr)
	if err != nil {
		return nil // the upgrader has answered
	}
	c.SetReadLimit(readLimit)
	return c
}

// handle upgrades a request on any path and runs the MQTT connection on it.
func (l *wsListener) handle(w http.ResponseWriter, r *http.Request) {
	c := upgradeMQTT(w, r, l.readLimit)
	if c == nil {
		return
	}
	defer c.Close()
	wc := &wsConn{ws: c, raw: c.NetConn()}
	if l.connectTimeout > 0 {
		_ = wc.SetReadDeadline(time.Now().Add(l.connectTimeout))
	}
	l.mu.Lock()
	establish := l.establish
	l.mu.Unlock()
	if err := establish(l.id, wc); err != nil {
		l.log.Debug("websocket client ended", "error", err)
	}
}

// wsConn carries an MQTT byte stream in binary WebSocket messages.
type wsConn struct {
	ws  *websocket.Conn
	raw net.Conn
	r   io.Reader // current message
	wmu sync.Mutex
	// writeTimeout > 0 gives every write its own deadline (connections
	// that did not come through a guardListener, which does that itself).
	writeTimeout time.Duration
}

// Read reads the byte stream across message boundaries: a message may hold
// several MQTT packets or part of one ([MQTT-6.0.0-2]). A message that is
// not binary ends the connection ([MQTT-6.0.0-1]).
func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			op, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errors.New("broker: websocket message is not binary")
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// Write sends p as one binary message ([MQTT-6.0.0-1]).
func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.writeTimeout > 0 {
		_ = c.ws.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	}
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close closes the underlying connection.
func (c *wsConn) Close() error { return c.ws.Close() }

// LocalAddr is the server address.
func (c *wsConn) LocalAddr() net.Addr { return c.raw.LocalAddr() }

// RemoteAddr is the client address.
func (c *wsConn) RemoteAddr() net.Addr { return c.raw.RemoteAddr() }

// SetDeadline sets the read deadline (writes have their own, see guardConn).
func (c *wsConn) SetDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetReadDeadline sets the read deadline.
func (c *wsConn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }

// ConnectionState exposes the TLS state (client certificates) of a wss connection.
func (c *wsConn) ConnectionState() tls.ConnectionState {
	if tc, ok := c.raw.(*tls.Conn); ok {
		return tc.ConnectionState()
	}
	return tls.ConnectionState{}
}

// ListenerWSHandler is the mochi listener id of the connections that arrive
// through WebSocketHandler (for example on the service API's HTTPS listener).
const ListenerWSHandler = "ws-http"

// WebSocketHandler returns an http.Handler that runs MQTT over WebSocket on
// any request path (sub-protocol mqtt, any case, or none), so that one HTTPS
// listener can carry both the service API and the devices' WebSocket
// traffic, as the cloud service does on port 443. The caller's http.Server
// owns the listener and the TLS handshake; the handler applies the broker's
// per-address connection rate limit and cap (after the handshake, since it
// sees the connection only then), the CONNECT deadline, the packet size
// limit and per-write deadlines. Client certificates of the TLS connection
// reach the service (X.509 attestation) when the server requested them.
// Broker.Shutdown closes these connections with the others. It may be
// called once per Broker, before or after Start.
func (b *Broker) WebSocketHandler() (http.Handler, error) {
	h := &wsHandler{
		b:              b,
		connectTimeout: b.cfg.ConnectTimeout,
		writeTimeout:   b.cfg.Limits.WriteTimeout,
		readLimit:      int64(b.cfg.Limits.MaxPacketSize) + 16,
		log:            b.log,
		conns:          make(map[*wsConn]struct{}),
	}
	if err := b.srv.AddListener(h); err != nil {
		return nil, fmt.Errorf("broker: adding the WebSocket handler: %w", err)
	}
	return h, nil
}

// Connections reports the open device connections per listener name
// (ListenerTCP, ListenerTLS, ListenerWS, ListenerWSHandler), CONNECT sent or not.
func (b *Broker) Connections() map[string]int {
	b.mu.Lock()
	out := make(map[string]int, len(b.guards)+1)
	for name, g := range b.guards {
		out[name] = g.open()
	}
	b.mu.Unlock()
	if l, ok := b.srv.Listeners.Get(ListenerWSHandler); ok {
		if h, ok := l.(*wsHandler); ok {
			out[ListenerWSHandler] = h.open()
		}
	}
	return out
}

// wsHandler is both the http.Handler of WebSocketHandler and the mochi
// listener its connections are attributed to (mochi's Close calls its Close,
// which closes them).
type wsHandler struct {
	b              *Broker
	connectTimeout time.Duration
	writeTimeout   time.Duration
	readLimit      int64
	log            *slog.Logger

	mu     sync.Mutex
	conns  map[*wsConn]struct{}
	closed bool
}

// ID returns the listener id.
func (h *wsHandler) ID() string { return ListenerWSHandler }

// Address names the handler (it binds no address of its own).
func (h *wsHandler) Address() string { return "http.Handler" }

// Protocol names the transport.
func (h *wsHandler) Protocol() string { return "wss" }

// Init keeps mochi's logger for the listener.
func (h *wsHandler) Init(log *slog.Logger) error {
	if log != nil {
		h.log = log
	}
	return nil
}

// Serve does nothing: connections arrive through ServeHTTP.
func (h *wsHandler) Serve(listeners.EstablishFn) {}

// Close refuses new connections and closes the open ones.
func (h *wsHandler) Close(closeClients listeners.CloseFn) {
	h.mu.Lock()
	h.closed = true
	conns := make([]*wsConn, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	closeClients(ListenerWSHandler)
}

// open reports how many connections are open.
func (h *wsHandler) open() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

// track adds c to the open connections, or reports false once closed.
func (h *wsHandler) track(c *wsConn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.conns[c] = struct{}{}
	return true
}

// untrack removes c.
func (h *wsHandler) untrack(c *wsConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.conns, c)
}

// ServeHTTP admits, upgrades and runs one MQTT connection until it ends.
func (h *wsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		http.Error(w, "MQTT over WebSocket: send an Upgrade: websocket request", http.StatusBadRequest)
		return
	}
	b := h.b
	b.mu.Lock()
	running := b.started && !b.shutdown
	b.mu.Unlock()
	if !running {
		http.Error(w, "the MQTT broker is not running", http.StatusServiceUnavailable)
		return
	}
	ip := ratelimit.AddressKey(r.RemoteAddr, b.cfg.Limits.IPv6PrefixLen)
	if ok, wait := b.rate.Allow(ip); !ok {
		b.refusals.Refused(ListenerWSHandler, refusal.AddressRate, ip)
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(wait.Seconds()+0.5))))
		http.Error(w, "too many connections", http.StatusTooManyRequests)
		return
	}
	if !b.perAddr.Acquire(ip) {
		b.refusals.Refused(ListenerWSHandler, refusal.AddressCap, ip)
		http.Error(w, "too many connections", http.StatusServiceUnavailable)
		return
	}
	defer b.perAddr.Release(ip)
	c := upgradeMQTT(w, r, h.readLimit)
	if c == nil {
		return
	}
	wc := &wsConn{ws: c, raw: c.NetConn(), writeTimeout: h.writeTimeout}
	defer wc.Close()
	if !h.track(wc) {
		return
	}
	defer h.untrack(wc)
	if h.connectTimeout > 0 {
		_ = wc.SetReadDeadline(time.Now().Add(h.connectTimeout))
	}
	if err := b.srv.EstablishConnection(ListenerWSHandler, wc); err != nil {
		h.log.Debug("websocket client ended", "remote", ip, "error", err)
	}
}
