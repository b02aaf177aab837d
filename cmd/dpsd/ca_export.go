package main

// dpsd ca export [serve flags]

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tpmdps/dpsd/internal/config"
	"github.com/tpmdps/dpsd/internal/datadir"
)

const caUsage = `Usage: dpsd ca export [serve flags]

export: prints the chain of the CA that issues device certificates, as PEM:
the issuing CA first, then the root that issued it, if it is not the root
itself. Give it to MQTT brokers that authenticate devices by their issued
certificates: mosquitto's cafile must hold the root (mosquitto does not
accept a partial chain). It reads the CA that dpsd serve, given the same
flags, DPSD_* environment variables and config file, would issue with:
issuer-cert, or the CA generated in the data directory (` + datadir.IssuingCACertFile + `).
It prints no key, and it creates or changes nothing.
`

// runCACmd runs "dpsd ca export".
func runCACmd(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "export":
			return runCAExport(args[1:], os.LookupEnv, stdout, stderr)
		case "-h", "--help", "help":
			fmt.Fprint(stdout, caUsage)
			return 0
		}
	}
	fmt.Fprint(stderr, caUsage)
	return 2
}

// runCAExport prints the issuing CA's chain.
func runCAExport(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	var out bytes.Buffer
	cfg, err := config.Load("dpsd ca export", caUsage+"\n(serve's settings follow)\n", args, lookupEnv, &out)
	if code, done := settingsRead("dpsd ca export", err, &out, stdout, stderr); done {
		return code
	}
	if cfg.Issuer == config.IssuerNone {
		fmt.Fprintln(stderr, "dpsd ca export: issuer is none: dpsd issues no certificates")
		return 1
	}
	file := cfg.IssuerCert
	if file == "" {
		file = filepath.Join(cfg.DataDir, datadir.IssuingCACertFile)
	}
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) && cfg.IssuerCert == "" {
		fmt.Fprintf(stderr, "dpsd ca export: no issuing CA in the data directory %s yet: start dpsd serve once (it generates one), or pass --data-dir\n", cfg.DataDir)
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "dpsd ca export: %v\n", err)
		return 1
	}
	chain, err := certificatesOf(data)
	if err != nil {
		fmt.Fprintf(stderr, "dpsd ca export: %s: %v\n", file, err)
		return 1
	}
	for _, c := range chain {
		if err := pem.Encode(stdout, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}); err != nil {
			fmt.Fprintf(stderr, "dpsd ca export: %v\n", err)
			return 1
		}
	}
	return 0
}

// certificatesOf parses every CERTIFICATE block of a PEM file; anything
// else in it (a key put there by mistake) is refused, never printed.
func certificatesOf(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a %q block among the certificates: not printed", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate")
	}
	return out, nil
}
