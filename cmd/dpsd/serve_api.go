package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/tpmdps/dpsd/api"
	"github.com/tpmdps/dpsd/internal/config"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/store"
)

// apiServer is the running service API.
type apiServer struct {
	srv  *http.Server
	addr net.Addr
	done chan struct{}
}

// startAPI serves the service API over HTTPS on cfg.APIAddr with the owner
// policy (provisioningserviceowner) keyed by the data directory's service
// policy key, and writes the matching connection string to the data
// directory (0600).
func startAPI(ctx context.Context, cfg config.Config, dir *datadir.Dir, st store.Store, tlsCfg *tls.Config, log *slog.Logger) (*apiServer, string, error) {
	h, err := api.New(api.Config{
		Store:    st,
		HostName: cfg.APIHostName,
		Policies: []api.Policy{{Name: api.DefaultPolicyName, Key: dir.Secrets.ServicePolicyKey, Rights: api.RightAll}},
		Logger:   log,
	})
	if err != nil {
		return nil, "", fmt.Errorf("service API: %w", err)
	}
	csPath, err := dir.WriteConnectionString(cfg.APIHostName, api.DefaultPolicyName)
	if err != nil {
		return nil, "", err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.APIAddr)
	if err != nil {
		return nil, "", fmt.Errorf("service API: listen on %q: %w", cfg.APIAddr, err)
	}
	tc := tlsCfg.Clone()
	tc.ClientAuth = tls.NoClientCert
	tc.NextProtos = []string{"h2", "http/1.1"}
	a := &apiServer{
		srv: &http.Server{
			Handler:           h,
			TLSConfig:         tc,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		addr: ln.Addr(),
		done: make(chan struct{}),
	}
	go func() {
		defer close(a.done)
		if err := a.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("service API stopped", "error", err)
		}
	}()
	return a, csPath, nil
}

// shutdown stops the API, waiting for requests in flight until ctx ends.
func (a *apiServer) shutdown(ctx context.Context) error {
	err := a.srv.Shutdown(ctx)
	if err != nil {
		_ = a.srv.Close()
	}
	<-a.done
	return err
}
