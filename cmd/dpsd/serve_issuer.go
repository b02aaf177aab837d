package main

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/tpmdps/dpsd/internal/config"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/issuer"
)

// issuerExpiryWarning: an issuing CA that expires sooner than this is
// warned about at every start (its certificates end with it).
const issuerExpiryWarning = 90 * 24 * time.Hour

// startIssuer returns the issuer the configuration names, nil for none:
// the built-in CA of issuer-cert and issuer-key, or the one kept in the
// data directory (generated on the first start with issuer-key-type). It
// logs which CA issues, never its key. The second result describes it for
// the start log.
func startIssuer(cfg config.Config, dir *datadir.Dir, scope string, now time.Time, log *slog.Logger) (issuer.Issuer, string, error) {
	if cfg.Issuer == config.IssuerNone {
		return nil, config.IssuerNone, nil
	}
	var ca *issuer.CA
	certFile, keyFile := cfg.IssuerCert, cfg.IssuerKey
	if certFile == "" && cfg.SecretsDir != "" {
		// A cluster: every node signs with the CA of the shared secrets
		// (dpsd cluster init wrote it), never one of its own.
		certFile = filepath.Join(cfg.SecretsDir, datadir.IssuingCACertFile)
		keyFile = filepath.Join(cfg.SecretsDir, datadir.IssuingCAKeyFile)
	}
	if certFile != "" {
		var err error
		if ca, err = datadir.LoadIssuingCA(certFile, keyFile); err != nil {
			return nil, "", fmt.Errorf("issuer: %w", err)
		}
	} else {
		var created bool
		var err error
		certFile, keyFile = dir.File(datadir.IssuingCACertFile), dir.File(datadir.IssuingCAKeyFile)
		if ca, created, err = dir.IssuingCA(issuer.KeyType(cfg.IssuerKeyType), scope, now); err != nil {
			return nil, "", fmt.Errorf("issuer: %w", err)
		}
		if created {
			log.Info("generated the issuing CA of device certificates", "keyType", cfg.IssuerKeyType,
				"cert", certFile, "key", keyFile)
		}
	}
	c := ca.Certificate()
	log.Info("issuer", "issuer", config.IssuerBuiltin, "subject", c.Subject.String(), "notAfter", c.NotAfter.UTC(),
		"chain", len(ca.Chain()), "cert", certFile)
	if left := c.NotAfter.Sub(now); left < issuerExpiryWarning {
		log.Warn("the issuing CA expires soon: every certificate it issues ends with it; give dpsd a new one (issuer-cert, issuer-key)",
			"notAfter", c.NotAfter.UTC(), "left", left.Round(time.Hour))
	}
	return ca, config.IssuerBuiltin + ":" + certFile, nil
}
