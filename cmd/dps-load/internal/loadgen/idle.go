package loadgen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tpmdps/dpsd/attest"
)

// IdleConfig is a memory-per-connection measurement: open Connections
// idle MQTT sessions and read the server's resident set size before and
// after.
type IdleConfig struct {
	// Addr, TLS and IDScope are as in Config.
	Addr    string
	TLS     *tls.Config
	IDScope string
	// Devices, when set, are enrolled symmetric devices: each connection
	// authenticates as one of them (Connections at most len(Devices)).
	// When empty the connections are restricted TPM sessions (no password)
	// named "{Prefix}-idle-{n}".
	Devices []*Device
	Prefix  string
	// Connections is how many sessions to open.
	Connections int
	// Concurrency is how many are being opened at once (default 50).
	Concurrency int
	// Settle is the wait after the last connection before reading the
	// server's memory (default 3 s).
	Settle time.Duration
	// Timeout bounds each connect (default DefaultTimeout).
	Timeout time.Duration
	// ServerPID is the server process (required).
	ServerPID int
	// Progress, when set, receives a progress line.
	Progress io.Writer
}

// IdleReport is the outcome of an idle-connection measurement.
type IdleReport struct {
	Addr        string `json:"addr"`
	Transport   string `json:"transport"`
	Mode        string `json:"mode"` // "authenticated" or "restricted"
	Requested   int    `json:"requested"`
	Opened      int    `json:"opened"`
	Alive       int    `json:"alive"` // still open when measured
	Failed      int    `json:"failed"`
	FirstError  string `json:"firstError,omitempty"`
	RSSStartKiB int64  `json:"rssStartKiB"`
	RSSEndKiB   int64  `json:"rssEndKiB"`
	// PerConnectionKiB is (RSSEndKiB - RSSStartKiB) / Alive.
	PerConnectionKiB float64 `json:"perConnectionKiB"`
	OpenMs           float64 `json:"openMs"`
}

// Idle runs the idle-connection measurement and closes the connections.
func Idle(ctx context.Context, cfg IdleConfig) (*IdleReport, error) {
	if cfg.Addr == "" || cfg.Connections <= 0 || cfg.ServerPID == 0 {
		return nil, errors.New("loadgen: idle: Addr, Connections and ServerPID are required")
	}
	if len(cfg.Devices) > 0 && cfg.Connections > len(cfg.Devices) {
		return nil, fmt.Errorf("loadgen: idle: %d connections but %d devices", cfg.Connections, len(cfg.Devices))
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 50
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 3 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "load"
	}
	rep := &IdleReport{Addr: cfg.Addr, Transport: "tcp", Mode: "restricted", Requested: cfg.Connections}
	if cfg.TLS != nil {
		rep.Transport = "tls"
	}
	if len(cfg.Devices) > 0 {
		rep.Mode = "authenticated"
	}
	before, err := readRSS(cfg.ServerPID)
	if err != nil {
		return nil, err
	}
	rep.RSSStartKiB = before

	r := &runner{cfg: &Config{Addr: cfg.Addr, TLS: cfg.TLS, IDScope: cfg.IDScope, Timeout: cfg.Timeout}}
	conns := make([]*mqttConn, cfg.Connections)
	errs := make([]error, cfg.Connections)
	var next, opened atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= cfg.Connections {
					return
				}
				d := &Device{RegistrationID: fmt.Sprintf("%s-idle-%d", cfg.Prefix, i)}
				pw := ""
				if len(cfg.Devices) > 0 {
					d = cfg.Devices[i]
					pw = attest.SignSAS(d.SymmetricKey, attest.RegistrationResource(cfg.IDScope, d.RegistrationID),
						time.Now().Add(time.Hour), "registration")
				}
				conns[i], errs[i] = r.session(ctx, d, pw)
				if n := opened.Add(1); cfg.Progress != nil && n%1000 == 0 {
					fmt.Fprintf(cfg.Progress, "\r%d connections opened ", n)
				}
			}
		}()
	}
	wg.Wait()
	rep.OpenMs = ms(time.Since(start))
	if cfg.Progress != nil {
		fmt.Fprintln(cfg.Progress)
	}
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.close()
			}
		}
	}()
	for i, err := range errs {
		if err != nil {
			rep.Failed++
			if rep.FirstError == "" {
				rep.FirstError = err.Error()
			}
		} else if conns[i] != nil {
			rep.Opened++
		}
	}
	select {
	case <-ctx.Done():
		return rep, ctx.Err()
	case <-time.After(cfg.Settle):
	}
	after, err := readRSS(cfg.ServerPID)
	if err != nil {
		return rep, err
	}
	rep.RSSEndKiB = after
	// A connection the server closed reads EOF at once; a live idle one
	// times out.
	for _, c := range conns {
		if c == nil {
			continue
		}
		_ = c.c.SetReadDeadline(time.Now().Add(time.Millisecond))
		_, err := c.r.ReadByte()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			rep.Alive++
		}
	}
	if rep.Alive > 0 {
		rep.PerConnectionKiB = float64(after-before) / float64(rep.Alive)
	}
	return rep, nil
}
