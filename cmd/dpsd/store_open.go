package main

// Opening the store the configuration names: the bbolt file (default) or
// an etcd cluster shared by several nodes.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/internal/config"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/bolt"
	etcdstore "github.com/tpmdps/dpsd/store/etcd"
)

// etcdOpenTimeout bounds how long a start waits for etcd to answer.
const etcdOpenTimeout = 15 * time.Second

// storeSpec is what --store names.
type storeSpec struct {
	engine string // "bolt" or "etcd"
	path   string // bolt: the file
	url    string // etcd: the URL as given
}

// parseStoreSpec reads a --store value; "" is the bbolt file of dataDir.
func parseStoreSpec(v, dataDir string) (storeSpec, error) {
	switch {
	case v == "":
		return storeSpec{engine: "bolt", path: (&datadir.Dir{Path: dataDir}).StorePath()}, nil
	case strings.HasPrefix(v, "bolt:") && len(v) > len("bolt:"):
		return storeSpec{engine: "bolt", path: strings.TrimPrefix(v, "bolt:")}, nil
	case strings.HasPrefix(v, "etcd://"):
		if _, _, err := etcdstore.ParseURL(v); err != nil {
			return storeSpec{}, err
		}
		return storeSpec{engine: "etcd", url: v}, nil
	}
	return storeSpec{}, fmt.Errorf("store %q: want bolt:PATH or etcd://host:2379[,...][/prefix]", v)
}

// String names the store for logs (no secrets: etcd URLs carry none).
func (s storeSpec) String() string {
	if s.engine == "bolt" {
		return "bolt:" + s.path
	}
	return s.url
}

// etcdTLS builds the etcd client TLS configuration from the etcd-* settings
// (nil: plain HTTP).
func etcdTLS(cfg config.Config) (*tls.Config, error) {
	if cfg.EtcdCA == "" && cfg.EtcdCert == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.EtcdCA != "" {
		pemBytes, err := os.ReadFile(cfg.EtcdCA)
		if err != nil {
			return nil, fmt.Errorf("etcd-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("etcd-ca %s holds no PEM certificate", cfg.EtcdCA)
		}
		tc.RootCAs = pool
	}
	if cfg.EtcdCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.EtcdCert, cfg.EtcdKey)
		if err != nil {
			return nil, fmt.Errorf("etcd-cert/etcd-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// openStore opens the store of spec. For etcd, key is the cluster's store
// key (from the secrets directory). now is the store's clock.
func openStore(ctx context.Context, spec storeSpec, cfg config.Config, key []byte, log *slog.Logger) (store.Store, error) {
	switch spec.engine {
	case "bolt":
		st, err := bolt.Open(spec.path, bolt.Options{Timeout: 5 * time.Second, Logger: log, MaxGroups: cfg.MaxGroups})
		if err != nil {
			return nil, fmt.Errorf("opening store: %w", err)
		}
		return st, nil
	case "etcd":
		eps, prefix, err := etcdstore.ParseURL(spec.url)
		if err != nil {
			return nil, err
		}
		tc, err := etcdTLS(cfg)
		if err != nil {
			return nil, err
		}
		if len(key) == 0 {
			return nil, fmt.Errorf("store %s: no store key (secrets-dir, written by dpsd cluster init)", spec)
		}
		st, err := etcdstore.Open(ctx, etcdstore.Options{Endpoints: eps, Prefix: prefix, TLS: tc, Key: key,
			Logger: log, MaxGroups: cfg.MaxGroups, DialTimeout: etcdOpenTimeout})
		if err != nil {
			scheme := "http"
			if tc != nil {
				scheme = "https"
			}
			return nil, fmt.Errorf("opening store %s (%s to %v; a TLS mismatch looks like an unreachable etcd): %w", spec, scheme, eps, err)
		}
		return st, nil
	}
	return nil, fmt.Errorf("unknown store engine %q", spec.engine)
}

// openDataDir opens the data directory with the secrets the configuration
// names: those of secrets-dir (a cluster; nothing secret is written) or
// those kept, and generated on first start, in the data directory.
func openDataDir(cfg config.Config) (*datadir.Dir, error) {
	if cfg.SecretsDir == "" {
		return datadir.Open(cfg.DataDir)
	}
	sec, err := datadir.ReadClusterSecrets(cfg.SecretsDir)
	if err != nil {
		return nil, err
	}
	return datadir.OpenWithSecrets(cfg.DataDir, sec)
}
