package main

// dpsd cluster init DIR [--tls-names NAMES]

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/issuer"
)

const clusterUsage = `Usage: dpsd cluster init DIR [--tls-names NAMES] [--issuer-key-type TYPE]

Writes the secrets every node of a cluster shares, once, into DIR (created
0700, files 0600): secrets.json (ID scope, TPM challenge secret, the two
service policy keys, the store key that seals secrets in etcd, the TLS
session ticket secret), a development CA (ca.pem, ca-key.pem) and a server
certificate for NAMES (tls.crt, tls.key; replace them with your own), and
the built-in issuer's CA of device certificates (issuing-ca.pem,
issuing-ca-key.pem), which every node signs with. It refuses a DIR that
already holds secrets.json.

Mount DIR on every node (a Kubernetes Secret with defaultMode 0400, a
Docker secret, or a directory) and start each with
  dpsd serve --secrets-dir DIR --store etcd://host:2379,.../prefix
Keep ca-key.pem off the nodes: they do not need it. See docs/operations.md.

Flags:
`

// runClusterCmd runs "dpsd cluster init".
func runClusterCmd(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "init" {
		fmt.Fprint(stderr, clusterUsage)
		return 2
	}
	fs := flag.NewFlagSet("dpsd cluster init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	names := fs.String("tls-names", "localhost,127.0.0.1", "comma-separated DNS names and IPs of the development server certificate (the load balancer's names)")
	keyType := fs.String("issuer-key-type", string(issuer.KeyECDSAP256), "key of the issuing CA of device certificates: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096")
	fs.Usage = func() { fmt.Fprint(stderr, clusterUsage); fs.PrintDefaults() }
	// DIR may come before or after the flags.
	rest := args[1:]
	var dir string
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		dir, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if dir == "" && fs.NArg() == 1 {
		dir = fs.Arg(0)
	} else if fs.NArg() > 0 || dir == "" {
		fs.Usage()
		return 2
	}
	var tlsNames []string
	for _, n := range strings.Split(*names, ",") {
		if n = strings.TrimSpace(n); n != "" {
			tlsNames = append(tlsNames, n)
		}
	}
	sec, err := datadir.InitCluster(dir, tlsNames, issuer.KeyType(*keyType), time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "dpsd cluster init: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote the cluster secrets to %s (ID scope %s)\n", dir, sec.IDScope)
	return 0
}
