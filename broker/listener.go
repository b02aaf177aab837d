package broker

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/tpmdps/dpsd/internal/ratelimit"
)

// guardListener wraps a bound TCP listener. Before a connection is handed on
// (and so before any TLS handshake) it applies the per-address connection
// rate limit and concurrent-connection cap, and sets a read deadline by
// which CONNECT must have arrived: mochi sets none itself, and replaces it
// with its keep-alive deadline once CONNECT has been read. Every accepted
// connection is tracked so that Shutdown can close the ones that never sent
// CONNECT.
type guardListener struct {
	net.Listener
	name           string
	connectTimeout time.Duration
	writeTimeout   time.Duration
	perAddr        *ratelimit.Counter
	rate           *ratelimit.Limiter
	log            *slog.Logger

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
		ip := remoteIP(c.RemoteAddr())
		if ok, _ := l.rate.Allow(ip); !ok {
			l.log.Debug("connection refused: rate limit", "listener", l.name, "remote", ip)
			_ = c.Close()
			continue
		}
		if !l.perAddr.Acquire(ip) {
			l.log.Debug("connection refused: per-address cap", "listener", l.name, "remote", ip)
			_ = c.Close()
			continue
		}
		gc := &guardConn{Conn: c, l: l, ip: ip, writeTimeout: l.writeTimeout}
		if l.connectTimeout > 0 {
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

// remoteIP returns the IP of a remote address (the whole string if it has no port).
func remoteIP(a net.Addr) string {
	if a == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(a.String()); err == nil {
		return host
	}
	return a.String()
}

// guardConn is an admitted connection. SetDeadline only moves the read
// deadline (mochi calls it for keep-alive); each Write gets its own deadline
// so that a client that stops reading cannot block a writer forever. Close
// releases the per-address slot exactly once.
type guardConn struct {
	net.Conn
	l            *guardListener
	ip           string
	writeTimeout time.Duration
	once         sync.Once
}

// SetDeadline sets the read deadline only; writes have their own.
func (c *guardConn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// Write writes with a fresh write deadline. A failed write (a client that
// stopped reading until the deadline passed, or a broken connection) closes
// the connection: part of a packet may have been sent, so the stream can no
// longer be framed, and mochi does not close a client on a write error.
func (c *guardConn) Write(p []byte) (int, error) {
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
		c.l.perAddr.Release(c.ip)
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return err
}
