package tpmtransport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// TPM response codes the swtpm transport retries: the command was not
// executed and may be sent again unchanged (TPM 2.0 Part 2, 6.6.3).
const (
	rcRetry   = 0x922 // TPM_RC_RETRY: the TPM was busy (a fresh swtpm answers it)
	rcYielded = 0x908 // TPM_RC_YIELDED: the TPM suspended the command
	rcTesting = 0x90A // TPM_RC_TESTING: self-test in progress
)

// headerSize is the size of a TPM command or response header: tag (2),
// size (4), command or response code (4).
const headerSize = 10

// maxResponseSize bounds the size a response header may announce. TPM
// responses are at most a few KiB (MAX_RESPONSE_SIZE is 4096 on common TPMs);
// anything much larger is a broken or hostile peer.
const maxResponseSize = 64 << 10

// ErrRetryExhausted is returned when the TPM still answered TPM_RC_RETRY (or
// YIELDED/TESTING) after the configured number of attempts.
var ErrRetryExhausted = errors.New("tpmtransport: TPM kept answering retry")

// ErrBadResponse is returned when the peer sent a malformed response header.
var ErrBadResponse = errors.New("tpmtransport: malformed TPM response")

// ErrClosed is returned by Send after Close.
var ErrClosed = errors.New("tpmtransport: transport closed")

// SWTPMOptions tunes a swtpm connection. The zero value is usable.
type SWTPMOptions struct {
	// MaxAttempts bounds how often one command is sent while the TPM answers
	// TPM_RC_RETRY, TPM_RC_YIELDED or TPM_RC_TESTING. Default 10.
	MaxAttempts int
	// RetryDelay is the pause before the first resend; it doubles per resend,
	// capped at 100 ms. Default 1 ms.
	RetryDelay time.Duration
	// IOTimeout bounds one command's write and its response. RSA primary key
	// creation on swtpm can take seconds. Default 2 minutes.
	IOTimeout time.Duration
	// Dialer dials the TCP connection; default a net.Dialer.
	Dialer *net.Dialer
}

// SWTPM speaks swtpm's raw TCP protocol ("--server type=tcp"): the command
// bytes are written as they are and the response comes back as it is, with no
// extra framing (unlike the Microsoft simulator's protocol that go-tpm's
// transport/tcp speaks). It implements transport.TPMCloser; Send calls are
// serialized, so one SWTPM may be shared by goroutines.
type SWTPM struct {
	addr string
	opts SWTPMOptions

	mu     sync.Mutex // serializes commands on conn
	conn   net.Conn
	closed bool

	retries atomic.Uint64
}

// DialSWTPM connects to a swtpm server socket at addr ("host:port"). swtpm
// must have been started with "--flags not-need-init,startup-clear" (or be
// initialised through its control channel) so that it accepts commands.
func DialSWTPM(ctx context.Context, addr string, opts SWTPMOptions) (*SWTPM, error) {
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 10
	}
	if opts.RetryDelay <= 0 {
		opts.RetryDelay = time.Millisecond
	}
	if opts.IOTimeout <= 0 {
		opts.IOTimeout = 2 * time.Minute
	}
	d := opts.Dialer
	if d == nil {
		d = &net.Dialer{Timeout: 10 * time.Second}
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("tpmtransport: dial swtpm %s: %w", addr, err)
	}
	return &SWTPM{addr: addr, opts: opts, conn: conn}, nil
}

// Addr returns the address the transport is connected to.
func (s *SWTPM) Addr() string { return s.addr }

// Retries returns how many times a command was resent because the TPM answered
// TPM_RC_RETRY, TPM_RC_YIELDED or TPM_RC_TESTING. It is a diagnostic.
func (s *SWTPM) Retries() uint64 { return s.retries.Load() }

// Send sends one TPM command and returns the whole response. A response whose
// code says "not executed, try again" is retried up to MaxAttempts times; the
// last such response is returned with ErrRetryExhausted.
func (s *SWTPM) Send(cmd []byte) ([]byte, error) {
	if len(cmd) < headerSize {
		return nil, fmt.Errorf("tpmtransport: command of %d bytes is shorter than a header", len(cmd))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	delay := s.opts.RetryDelay
	for attempt := 1; ; attempt++ {
		rsp, err := s.roundTrip(cmd)
		if err != nil {
			// A failed or partial exchange leaves the byte stream out of step:
			// nothing read after it could be trusted, so the transport is done.
			_ = s.conn.Close()
			s.closed = true
			return nil, err
		}
		rc := binary.BigEndian.Uint32(rsp[6:10])
		if rc != rcRetry && rc != rcYielded && rc != rcTesting {
			return rsp, nil
		}
		if attempt >= s.opts.MaxAttempts {
			return rsp, fmt.Errorf("%w: response code 0x%x after %d attempts", ErrRetryExhausted, rc, attempt)
		}
		s.retries.Add(1)
		time.Sleep(delay)
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// roundTrip writes cmd and reads one response: the 10-byte header, then the
// rest of the size the header announces. Called with s.mu held.
func (s *SWTPM) roundTrip(cmd []byte) ([]byte, error) {
	if err := s.conn.SetDeadline(time.Now().Add(s.opts.IOTimeout)); err != nil {
		return nil, fmt.Errorf("tpmtransport: set deadline: %w", err)
	}
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("tpmtransport: write command to swtpm %s: %w", s.addr, err)
	}
	hdr := make([]byte, headerSize)
	if _, err := io.ReadFull(s.conn, hdr); err != nil {
		return nil, fmt.Errorf("tpmtransport: read response header from swtpm %s: %w", s.addr, err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < headerSize || size > maxResponseSize {
		return nil, fmt.Errorf("%w: response size %d", ErrBadResponse, size)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(s.conn, rsp[headerSize:]); err != nil {
		return nil, fmt.Errorf("tpmtransport: read response body from swtpm %s: %w", s.addr, err)
	}
	return rsp, nil
}

// Close closes the connection. The swtpm process keeps its TPM state
// (persistent objects survive; loaded transient objects too, until swtpm
// restarts), and accepts a new connection.
func (s *SWTPM) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.conn.Close()
}
