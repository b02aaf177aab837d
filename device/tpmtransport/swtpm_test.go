package tpmtransport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"

	"github.com/tpmdps/dpsd/internal/swtpmtest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func getRandom(t *testing.T, tpm transport.TPM) []byte {
	t.Helper()
	rsp, err := tpm2.GetRandom{BytesRequested: 16}.Execute(tpm)
	if err != nil {
		t.Fatalf("GetRandom: %v", err)
	}
	if len(rsp.RandomBytes.Buffer) != 16 {
		t.Fatalf("GetRandom returned %d bytes, want 16", len(rsp.RandomBytes.Buffer))
	}
	return rsp.RandomBytes.Buffer
}

func TestSWTPMGetRandom(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm, err := Open(ctxT(t), sw.Selector())
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	a, b := getRandom(t, tpm), getRandom(t, tpm)
	if bytes.Equal(a, b) {
		t.Fatalf("two GetRandom calls returned the same bytes %x", a)
	}
}

// TestSWTPMFreshCreatePrimary runs the first key creation on a fresh swtpm
// and checks that it succeeds. A fresh swtpm has been seen to answer
// TPM_RC_RETRY once; swtpm 0.7.1 here answers directly, so the retry path
// itself is driven by TestSWTPMRetriesRetryResponses, which puts a proxy
// answering TPM_RC_RETRY in front of a real swtpm.
func TestSWTPMFreshCreatePrimary(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm, err := DialSWTPM(ctxT(t), sw.Addr(), SWTPMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(tpm2.RSAEKTemplate),
	}.Execute(tpm)
	if err != nil {
		t.Fatalf("CreatePrimary on a fresh swtpm: %v", err)
	}
	t.Logf("retries: %d", tpm.Retries())
	if len(rsp.Name.Buffer) != 34 {
		t.Fatalf("EK name of %d bytes, want 34 (SHA-256 name)", len(rsp.Name.Buffer))
	}
	if _, err := (tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
}

// retryProxy sits between the transport and a real swtpm on a real socket. It
// answers the first `inject` commands it sees with a bare TPM_RC_RETRY
// response (rc, as a fresh TPM does) and forwards the rest, writing each
// response back one byte at a time so the reader must reassemble it.
type retryProxy struct {
	addr string

	mu       sync.Mutex
	inject   int
	rc       uint32
	injected int
	relayed  int
}

func startRetryProxy(t *testing.T, upstream string, inject int, rc uint32) *retryProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &retryProxy{addr: l.Addr().String(), inject: inject, rc: rc}
	done := make(chan struct{})
	t.Cleanup(func() { _ = l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.serve(c, upstream)
		}
	}()
	return p
}

func (p *retryProxy) serve(c net.Conn, upstream string) {
	defer c.Close()
	up, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	defer up.Close()
	for {
		hdr := make([]byte, 10)
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		cmd := make([]byte, binary.BigEndian.Uint32(hdr[2:6]))
		copy(cmd, hdr)
		if _, err := io.ReadFull(c, cmd[10:]); err != nil {
			return
		}
		p.mu.Lock()
		injectNow := p.injected < p.inject
		if injectNow {
			p.injected++
		} else {
			p.relayed++
		}
		p.mu.Unlock()
		var rsp []byte
		if injectNow {
			rsp = binary.BigEndian.AppendUint16(nil, 0x8001)
			rsp = binary.BigEndian.AppendUint32(rsp, 10)
			rsp = binary.BigEndian.AppendUint32(rsp, p.rc)
		} else {
			if _, err := up.Write(cmd); err != nil {
				return
			}
			if _, err := io.ReadFull(up, hdr); err != nil {
				return
			}
			rsp = make([]byte, binary.BigEndian.Uint32(hdr[2:6]))
			copy(rsp, hdr)
			if _, err := io.ReadFull(up, rsp[10:]); err != nil {
				return
			}
		}
		for i := range rsp {
			if _, err := c.Write(rsp[i : i+1]); err != nil {
				return
			}
		}
	}
}

func (p *retryProxy) counts() (injected, relayed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.injected, p.relayed
}

func TestSWTPMRetriesRetryResponses(t *testing.T) {
	sw := swtpmtest.Start(t)
	for _, rc := range []uint32{rcRetry, rcYielded, rcTesting} {
		proxy := startRetryProxy(t, sw.Addr(), 3, rc)
		tpm, err := DialSWTPM(ctxT(t), proxy.addr, SWTPMOptions{MaxAttempts: 5})
		if err != nil {
			t.Fatal(err)
		}
		getRandom(t, tpm)
		if got := tpm.Retries(); got != 3 {
			t.Errorf("rc 0x%x: Retries() = %d, want 3", rc, got)
		}
		if inj, rel := proxy.counts(); inj != 3 || rel != 1 {
			t.Errorf("rc 0x%x: proxy injected %d relayed %d, want 3 and 1", rc, inj, rel)
		}
		tpm.Close()
	}
}

func TestSWTPMRetryIsBounded(t *testing.T) {
	sw := swtpmtest.Start(t)
	proxy := startRetryProxy(t, sw.Addr(), 1000, rcRetry)
	tpm, err := DialSWTPM(ctxT(t), proxy.addr, SWTPMOptions{MaxAttempts: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	_, err = tpm2.GetRandom{BytesRequested: 8}.Execute(tpm)
	if !errors.Is(err, ErrRetryExhausted) {
		t.Fatalf("err = %v, want ErrRetryExhausted", err)
	}
	if inj, rel := proxy.counts(); inj != 4 || rel != 0 {
		t.Fatalf("proxy saw %d injected, %d relayed; want exactly 4 attempts", inj, rel)
	}
}

// TestSWTPMBadResponseSize checks that a peer announcing an impossible size
// is refused and the transport closed rather than read out of step.
func TestSWTPMBadResponseSize(t *testing.T) {
	for _, size := range []uint32{0, 9, 1 << 30} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			buf := make([]byte, 12)
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			rsp := binary.BigEndian.AppendUint16(nil, 0x8001)
			rsp = binary.BigEndian.AppendUint32(rsp, size)
			rsp = binary.BigEndian.AppendUint32(rsp, 0)
			_, _ = c.Write(rsp)
			_, _ = io.Copy(io.Discard, c)
		}()
		tpm, err := DialSWTPM(ctxT(t), l.Addr().String(), SWTPMOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = tpm2.GetRandom{BytesRequested: 2}.Execute(tpm)
		if !errors.Is(err, ErrBadResponse) {
			t.Errorf("size %d: err = %v, want ErrBadResponse", size, err)
		}
		_, err = tpm2.GetRandom{BytesRequested: 2}.Execute(tpm)
		if !errors.Is(err, ErrClosed) {
			t.Errorf("size %d: second command err = %v, want ErrClosed", size, err)
		}
		tpm.Close()
		l.Close()
	}
}

// TestSWTPMReopenKeepsState closes the connection, reconnects and finds a
// persistent object made through the first connection.
func TestSWTPMReopenKeepsState(t *testing.T) {
	sw := swtpmtest.Start(t)
	ctx := ctxT(t)
	tpm, err := Open(ctx, sw.Selector())
	if err != nil {
		t.Fatal(err)
	}
	cp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	const h = tpm2.TPMHandle(0x81000042)
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     &tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name},
		PersistentHandle: h,
	}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.GetRandom{BytesRequested: 1}).Execute(tpm); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Close: %v, want ErrClosed", err)
	}
	tpm, err = Open(ctx, sw.Selector())
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(tpm)
	if err != nil {
		t.Fatalf("ReadPublic after reopen: %v", err)
	}
	if !bytes.Equal(rp.Name.Buffer, cp.Name.Buffer) {
		t.Fatalf("persisted key name changed across reopen")
	}
}

func TestOpenSelectors(t *testing.T) {
	ctx := ctxT(t)
	for _, sel := range []string{"", "tpm0", "swtpm:nohostport", "swtpm:", "dev/tpm0"} {
		if _, err := Open(ctx, sel); !errors.Is(err, ErrBadSelector) {
			t.Errorf("Open(%q) = %v, want ErrBadSelector", sel, err)
		}
	}
	if _, err := Open(ctx, "/nonexistent/tpm"); err == nil {
		t.Errorf("Open of a missing device succeeded")
	}
	regular := filepath.Join(t.TempDir(), "tpm")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, regular); !errors.Is(err, linuxtpm.ErrFileIsNotDevice) {
		t.Errorf("Open(regular file) = %v, want ErrFileIsNotDevice", err)
	}
}
