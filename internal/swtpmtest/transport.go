package swtpmtest

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

// tpmRCRetry is TPM_RC_RETRY, which a fresh swtpm answers once.
const tpmRCRetry = 0x922

// tpmHeaderSize is the TPM response header: tag (2), size (4), code (4).
const tpmHeaderSize = 10

// conn is a go-tpm transport over swtpm's raw command socket: each command
// is written as is and the response read as a header then the rest.
type conn struct {
	mu sync.Mutex
	c  net.Conn
}

// Open connects go-tpm to this swtpm (its raw TCP command socket, not the
// simulator framing of go-tpm's transport/tcp) and closes the connection in
// t.Cleanup. swtpm serves one connection at a time: close it before running
// tpm2-tools, whose commands would otherwise wait.
func (p *TPM) Open(t testing.TB) transport.TPMCloser {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.port), toolTimeout)
	if err != nil {
		t.Fatalf("swtpmtest: connect to swtpm: %v", err)
	}
	tc := &conn{c: c}
	t.Cleanup(func() { _ = tc.Close() })
	return tc
}

// Send implements transport.TPM: it sends one command and returns the whole
// response, resending the command (at most 10 times) on TPM_RC_RETRY.
func (c *conn) Send(cmd []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if err := c.c.SetDeadline(time.Now().Add(toolTimeout)); err != nil {
			return nil, err
		}
		if _, err := c.c.Write(cmd); err != nil {
			return nil, fmt.Errorf("swtpmtest: send command: %w", err)
		}
		rsp := make([]byte, tpmHeaderSize)
		if _, err := io.ReadFull(c.c, rsp); err != nil {
			return nil, fmt.Errorf("swtpmtest: read response header: %w", err)
		}
		size := int(binary.BigEndian.Uint32(rsp[2:6]))
		if size < tpmHeaderSize || size > 1<<16 {
			return nil, fmt.Errorf("swtpmtest: response size %d", size)
		}
		rsp = append(rsp, make([]byte, size-tpmHeaderSize)...)
		if _, err := io.ReadFull(c.c, rsp[tpmHeaderSize:]); err != nil {
			return nil, fmt.Errorf("swtpmtest: read response: %w", err)
		}
		if binary.BigEndian.Uint32(rsp[6:10]) == tpmRCRetry && attempt < 10 {
			continue
		}
		return rsp, nil
	}
}

// Close closes the connection; swtpm keeps running.
func (c *conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.c.Close()
}
