package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// wsListener serves MQTT over (secure) WebSocket on any request path. mochi's
// own listeners.Websocket binds its address itself (so it cannot run behind
// guardListener, report a port-0 address or expose the TLS state for X.509)
// and matches the sub-protocol `mqtt` case-sensitively; protocol.md asks for
// a case-insensitive match.
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

// handle upgrades a request on any path and runs the MQTT connection on it.
func (l *wsListener) handle(w http.ResponseWriter, r *http.Request) {
	proto, ok := pickSubprotocol(r)
	if !ok {
		http.Error(w, "sub-protocol mqtt required", http.StatusBadRequest)
		return
	}
	var hdr http.Header
	if proto != "" {
		hdr = http.Header{"Sec-Websocket-Protocol": {proto}}
	}
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	c, err := up.Upgrade(w, r, hdr)
	if err != nil {
		return // the upgrader has answered
	}
	defer c.Close()
	c.SetReadLimit(l.readLimit)
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
}

// Read reads the byte stream across message boundaries.
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

// Write sends p as one binary message.
func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
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
