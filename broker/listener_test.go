package broker

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/ratelimit"
)

// TestWriteTimeoutClosesConnection: a client that never reads makes the
// server's writes fail once the write deadline passes; the connection is
// then closed (the client sees the end of the stream after what was sent)
// and its per-address slot is released.
func TestWriteTimeoutClosesConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &guardListener{
		Listener:     ln,
		name:         "test",
		writeTimeout: 100 * time.Millisecond,
		perAddr:      ratelimit.NewCounter(1),
		rate:         ratelimit.New(1000, 1000, time.Now),
		log:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		conns:        make(map[*guardConn]struct{}),
	}
	defer g.Close()

	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := g.Accept()
	if err != nil {
		t.Fatal(err)
	}

	// Write until the socket buffers are full and the deadline passes.
	chunk := make([]byte, 1<<20)
	var werr error
	for i := 0; i < 1024 && werr == nil; i++ { // at most 1 GiB: far beyond any socket buffer
		_, werr = server.Write(chunk)
	}
	if !errors.Is(werr, os.ErrDeadlineExceeded) {
		t.Fatalf("write to a client that never reads: %v, want a deadline error", werr)
	}
	if n := g.open(); n != 0 {
		t.Fatalf("%d connections still tracked after the failed write", n)
	}
	if !g.perAddr.Acquire("127.0.0.1") {
		t.Fatal("the per-address slot was not released")
	}
	if _, err := server.Write([]byte("x")); err == nil {
		t.Fatal("a write after the failure succeeded: the connection is still open")
	}
	// The client drains what was sent and then sees the stream end.
	if err := client.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, client); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("client read: %v, want the end of the stream", err)
	}
}

// isReset reports a connection reset, which the client may see instead of
// EOF when unread data was discarded by the server's close.
func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}
