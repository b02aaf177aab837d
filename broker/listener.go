package broker

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/tpmdps/dpsd/internal/ratelimit"
	"github.com/tpmdps/dpsd/internal/refusal"
)

// guardListener wraps a bound TCP listener. Before a connection is handed on
// (and so before any TLS handshake) it applies the per-address connection
// rate limit and concurrent-connection cap (keyed by ratelimit.AddressKey:
// an IPv6 address counts as its prefix; refused connections are counted and
// logged by the refusal.Reporter), and sets a read deadline by
// which CONNECT must have arrived: mochi sets none itself, and replaces it
// with its keep-alive deadline once CONNECT has been read (one and a half
// times the client's Keep Alive: [MQTT-3.1.2-24] in 3.1.1, [MQTT-3.1.2-22]
// in MQTT 5; none for Keep Alive 0). Every accepted
// connection is tracked so that Shutdown can close the ones that never sent
// CONNECT.
type guardListener struct {
	net.Listener
	name           string
	connectTimeout time.Duration
	writeTimeout   time.Duration
	perAddr        *ratelimit.Counter
	rate           *ratelimit.Limiter
	ipv6PrefixLen  int               // of the per-address key
	refusals       *refusal.Reporter // nil: refusals go unreported
	log            *slog.Logger
	// serverDeadlines leaves deadlines and writes of admitted connections
	// to the server using them (Guard); otherwise they get the CONNECT
	// deadline and per-write deadlines that mochi needs.
	serverDeadlines bool

	mu     sync.Mutex
	conns  map[*guardConn]struct{}
	closed bool
}

// Accept returns the next admitted connection. Refused connections are closed
// at once and never returned; transient accept errors (such as running out of
// file descriptors) are retried with backoff, because mochi stops serving a
// listener on the first Accept error.
func (l *guardListener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || l.isClosed() {
				return nil, err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("accept failed; retrying", "listener", l.name, "error", err, "backoff", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		key := addressKey(c.RemoteAddr(), l.ipv6PrefixLen)
		if ok, _ := l.rate.Allow(key); !ok {
			l.refusals.Refused(l.name, refusal.AddressRate, key)
			_ = c.Close()
			continue
		}
		if !l.perAddr.Acquire(key) {
			l.refusals.Refused(l.name, refusal.AddressCap, key)
			_ = c.Close()
			continue
		}
		gc := &guardConn{Conn: c, l: l, key: key, writeTimeout: l.writeTimeout}
		if l.connectTimeout > 0 && !l.serverDeadlines {
			_ = c.SetReadDeadline(time.Now().Add(l.connectTimeout))
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			_ = gc.Close()
			return nil, net.ErrClosed
		}
		l.conns[gc] = struct{}{}
		l.mu.Unlock()
		return gc, nil
	}
}

// Close stops accepting; connections already accepted stay open.
func (l *guardListener) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	return l.Listener.Close()
}

func (l *guardListener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// closeAll closes every connection accepted and still open.
func (l *guardListener) closeAll() {
	l.mu.Lock()
	conns := make([]*guardConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// open reports how many accepted connections are open.
func (l *guardListener) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// addressKey returns the key of a remote address for the per-address limits.
func addressKey(a net.Addr, ipv6PrefixLen int) string {
	if a == nil {
		return ""
	}
	return ratelimit.AddressKey(a.String(), ipv6PrefixLen)
}

// guardConn is an admitted connection. SetDeadline only moves the read
// deadline (mochi calls it for keep-alive); each Write gets its own deadline
// so that a client that stops reading cannot block a writer forever. Close
// releases the per-address slot exactly once.
type guardConn struct {
	net.Conn
	l            *guardListener
	key          string // per-address limit key
	writeTimeout time.Duration
	once         sync.Once
}

// SetDeadline sets the read deadline only; writes have their own (both
// deadlines behind Guard).
func (c *guardConn) SetDeadline(t time.Time) error {
	if c.l.serverDeadlines {
		return c.Conn.SetDeadline(t)
	}
	return c.Conn.SetReadDeadline(t)
}

// Write writes with a fresh write deadline. A failed write (a client that
// stopped reading until the deadline passed, or a broken connection) closes
// the connection: part of a packet may have been sent, so the stream can no
// longer be framed, and mochi does not close a client on a write error.
func (c *guardConn) Write(p []byte) (int, error) {
	if c.l.serverDeadlines {
		return c.Conn.Write(p)
	}
	if c.writeTimeout > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	}
	n, err := c.Conn.Write(p)
	if err != nil {
		_ = c.Close()
	}
	return n, err
}

// Close closes the connection and releases its slot.
func (c *guardConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.perAddr.Release(c.key)
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return err
}

// GuardLimits bound the connections of one address on a listener that is
// not the broker's own, such as the service API's HTTPS listener. For the
// counts a zero value takes the MQTT listeners' default
// (DefaultConnectionsPerAddress, DefaultConnectionsPerAddressPerMinute,
// DefaultConnectionBurstPerAddress) and a negative value disables the limit.
type GuardLimits struct {
	ConnectionsPerAddress          int
	ConnectionsPerAddressPerMinute int
	ConnectionBurstPerAddress      int
	// IPv6PrefixLen keys the limits (ratelimit.AddressKey); zero: 64.
	IPv6PrefixLen int
}

// Guard puts ln behind the per-address limits the MQTT listeners have,
// applied as each connection is accepted and so before any TLS handshake: a
// connection over the cap or the rate is closed at once and reported to
// refusals under name (nil: not reported). An admitted connection releases
// its slot when closed; its deadlines and writes are left to the server
// that uses it (net/http sets its own, and a WebSocket upgrade clears them).
func Guard(ln net.Listener, name string, lim GuardLimits, refusals *refusal.Reporter, log *slog.Logger) net.Listener {
	if lim.ConnectionsPerAddress == 0 {
		lim.ConnectionsPerAddress = DefaultConnectionsPerAddress
	}
	if lim.ConnectionsPerAddressPerMinute == 0 {
		lim.ConnectionsPerAddressPerMinute = DefaultConnectionsPerAddressPerMinute
	}
	if lim.ConnectionBurstPerAddress == 0 {
		lim.ConnectionBurstPerAddress = DefaultConnectionBurstPerAddress
	}
	var rate *ratelimit.Limiter
	if lim.ConnectionsPerAddressPerMinute > 0 {
		rate = ratelimit.New(ratelimit.PerMinute(lim.ConnectionsPerAddressPerMinute), lim.ConnectionBurstPerAddress, nil)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &guardListener{
		Listener:        ln,
		name:            name,
		perAddr:         ratelimit.NewCounter(lim.ConnectionsPerAddress),
		rate:            rate,
		ipv6PrefixLen:   lim.IPv6PrefixLen,
		refusals:        refusals,
		log:             log,
		serverDeadlines: true,
		conns:           make(map[*guardConn]struct{}),
	}
}

// handshakeListener serves TLS on an admission-guarded listener (so the
// per-address limits apply before any handshake) and runs each server
// handshake on its own short-lived goroutine, handing a connection on only
// once its handshake has succeeded. mochi reads every client on one goroutine
// for the connection's whole life; a handshake run there (on the first Read)
// grows that goroutine's stack for the certificate and key-exchange work, and
// an idle connection then keeps the larger stack. The handshake is bounded by
// the CONNECT deadline the guard sets at accept (and each write by the write
// timeout); a failed handshake closes the connection, which releases its
// per-address slot.
type handshakeListener struct {
	inner net.Listener
	cfg   *tls.Config
	name  string
	log   *slog.Logger

	start sync.Once
	ready chan net.Conn
	done  chan struct{}
	stop  sync.Once

	mu  sync.Mutex
	err error
}

// newHandshakeListener returns a TLS listener over inner with config cfg.
func newHandshakeListener(inner net.Listener, cfg *tls.Config, name string, log *slog.Logger) *handshakeListener {
	return &handshakeListener{
		inner: inner,
		cfg:   cfg,
		name:  name,
		log:   log,
		ready: make(chan net.Conn),
		done:  make(chan struct{}),
	}
}

// Accept returns the next connection whose TLS handshake has completed.
func (l *handshakeListener) Accept() (net.Conn, error) {
	l.start.Do(func() { go l.acceptLoop() })
	select {
	case <-l.done:
		return nil, l.acceptErr()
	default:
	}
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, l.acceptErr()
	}
}

// acceptLoop accepts admitted connections and starts a handshake for each,
// until the inner listener fails (it only does once closed).
func (l *handshakeListener) acceptLoop() {
	for {
		c, err := l.inner.Accept()
		if err != nil {
			l.mu.Lock()
			if l.err == nil {
				l.err = err
			}
			l.mu.Unlock()
			l.stop.Do(func() { close(l.done) })
			return
		}
		go l.handshake(tls.Server(c, l.cfg))
	}
}

// handshake completes the server handshake of tc and hands it to Accept, or
// closes it when the handshake fails or the listener has been closed.
func (l *handshakeListener) handshake(tc *tls.Conn) {
	if err := tc.Handshake(); err != nil {
		l.log.Debug("TLS handshake failed", "listener", l.name, "remote", tc.RemoteAddr().String(), "error", err)
		_ = tc.Close()
		return
	}
	select {
	case l.ready <- tc:
	case <-l.done:
		_ = tc.Close()
	}
}

// acceptErr is the error Accept returns once the listener is closed.
func (l *handshakeListener) acceptErr() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	return net.ErrClosed
}

// Close stops accepting; connections already handed on stay open, and those
// still in their handshake are closed when it ends.
func (l *handshakeListener) Close() error {
	l.stop.Do(func() { close(l.done) })
	return l.inner.Close()
}

// Addr returns the inner listener's address.
func (l *handshakeListener) Addr() net.Addr { return l.inner.Addr() }
