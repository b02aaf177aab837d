package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/tpmdps/dpsd/cmd/dpsd/internal/metrics"
)

// metricsServer is the plain-HTTP listener of metrics-addr: /metrics and
// nothing else, so that the metrics can stay on a loopback or private
// address while api-addr faces the internet.
type metricsServer struct {
	srv  *http.Server
	addr net.Addr
	done chan struct{}
}

// startMetrics serves mx at /metrics on addr (plain HTTP; every other path
// answers 404). It returns once the listener is bound.
func startMetrics(ctx context.Context, addr string, mx *metrics.Metrics, log *slog.Logger) (*metricsServer, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+metricsPath, mx.Handler(log))
	m := &metricsServer{
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		addr: ln.Addr(),
		done: make(chan struct{}),
	}
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener stopped", "error", err)
		}
	}()
	return m, nil
}

// shutdown stops the listener, waiting for scrapes in flight until ctx ends.
func (m *metricsServer) shutdown(ctx context.Context) error {
	err := m.srv.Shutdown(ctx)
	if err != nil {
		_ = m.srv.Close()
	}
	<-m.done
	return err
}
