package main

// Shared plumbing of the admin commands (enrollment, group, registration):
// flags, the API client, and output as a table or JSON.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/internal/config"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/store"
)

// Environment variables read by the admin commands when the flag is not given.
const (
	// adminConnEnv holds the service connection string.
	adminConnEnv = "DPSD_CONNECTION_STRING"
	// adminEndpointEnv holds the service URL (a connection string names a
	// host, never a port).
	adminEndpointEnv = "DPSD_ENDPOINT"
	// adminCAFileEnv holds a PEM file of CAs to trust for the service.
	adminCAFileEnv = "DPSD_CA_FILE"
)

// Exit codes of the admin commands.
const (
	adminExitOK    = 0
	adminExitFail  = 1
	adminExitUsage = 2
)

// errAdminUsage marks a usage error (exit code 2); the message was already printed.
var errAdminUsage = errors.New("usage error")

// adminOpts are the flags every admin command takes.
type adminOpts struct {
	connString string
	endpoint   string
	caFile     string
	configFile string
	dataDir    string
	timeout    time.Duration
	json       bool
	// warnings receives the service's warnings, one "warning: ..." line
	// each (the command's stderr).
	warnings io.Writer

	// url is the service URL the client was built for (for error hints).
	url string
}

// register adds the common flags to fs.
func (o *adminOpts) register(fs *flag.FlagSet) {
	fs.StringVar(&o.connString, "connection-string", "", "service connection string (default $"+adminConnEnv+", else the owner's in the data directory)")
	fs.StringVar(&o.endpoint, "endpoint", os.Getenv(adminEndpointEnv), "service URL overriding https://{HostName}, e.g. https://127.0.0.1:8443 (default $"+adminEndpointEnv+"; with the data directory's connection string: https://127.0.0.1:{port of api-addr})")
	fs.StringVar(&o.caFile, "ca-file", os.Getenv(adminCAFileEnv), "PEM file of CA certificates to trust for the service's TLS certificate (default $"+adminCAFileEnv+"; with the data directory's connection string: its ca.pem)")
	fs.StringVar(&o.configFile, "config", "", "dpsd's JSON config file, for data-dir, api-addr and api-host-name when the connection string comes from the data directory (default $"+config.EnvPrefix+"CONFIG)")
	fs.StringVar(&o.dataDir, "data-dir", "", "dpsd's data directory, read when no connection string is given (default: as dpsd serve, $"+config.EnvPrefix+"DATA_DIR or ./data)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "timeout of each request")
	fs.BoolVar(&o.json, "json", false, "print JSON instead of a table")
}

// localService is what the admin commands take from the server's own
// configuration and data directory when no connection string is given.
type localService struct {
	connString string
	url        string // https://127.0.0.1:{port of api-addr}
	serverName string // api-host-name: the name the server's certificate covers
	caFile     string // the development CA, "" with a tls-cert of one's own
}

// local reads the owner connection string from the data directory and finds
// the API address as dpsd serve would: --config/--data-dir, then DPSD_*
// variables, then the config file, then the defaults.
func (o *adminOpts) local() (*localService, error) {
	var args []string
	if o.configFile != "" {
		args = append(args, "--config", o.configFile)
	}
	if o.dataDir != "" {
		args = append(args, "--data-dir", o.dataDir)
	}
	cfg, err := config.Load("dpsd", "", args, os.LookupEnv, io.Discard)
	if err != nil {
		return nil, fmt.Errorf("reading dpsd's configuration for the data directory: %w", err)
	}
	csFile := filepath.Join(cfg.DataDir, datadir.ConnectionStringFile)
	b, err := os.ReadFile(csFile)
	if err != nil {
		return nil, fmt.Errorf("no connection string: pass --connection-string or set $%s, or run this on the server's machine "+
			"(%s: %w; give --data-dir if dpsd serve keeps its data elsewhere)", adminConnEnv, csFile, err)
	}
	ls := &localService{connString: strings.TrimSpace(string(b)), serverName: cfg.APIHostName}
	if cfg.APIAddr == "" {
		return nil, fmt.Errorf("the service API is off in dpsd's configuration (api-addr is empty): set $%s to where it listens", adminEndpointEnv)
	}
	host, port, err := net.SplitHostPort(cfg.APIAddr)
	if err != nil {
		return nil, fmt.Errorf("api-addr %q: %w", cfg.APIAddr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	ls.url = "https://" + net.JoinHostPort(host, port)
	if cfg.TLSCert == "" {
		ls.caFile = filepath.Join(cfg.DataDir, datadir.CACertFile)
	}
	return ls, nil
}

// client builds the API client from the flags and the environment, and
// without a connection string from the server's own data directory and
// configuration (dpsd serve on this machine).
func (o *adminOpts) client() (*apiclient.Client, error) {
	cs := o.connString
	if cs == "" {
		cs = os.Getenv(adminConnEnv)
	}
	endpoint, caFile, serverName := o.endpoint, o.caFile, ""
	if cs == "" {
		ls, err := o.local()
		if err != nil {
			return nil, err
		}
		cs = ls.connString
		if endpoint == "" {
			endpoint, serverName = ls.url, ls.serverName
		}
		if caFile == "" {
			caFile = ls.caFile
		}
	}
	if u, err := url.Parse(endpoint); endpoint != "" && err == nil && u.Scheme == "http" {
		return nil, fmt.Errorf("endpoint %s: the service API is served over HTTPS only: use https://%s (--endpoint or $%s)", endpoint, u.Host, adminEndpointEnv)
	}
	hc := &http.Client{Timeout: o.timeout}
	if caFile != "" || serverName != "" {
		tc := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pemBytes, err := os.ReadFile(caFile)
			if err != nil {
				return nil, fmt.Errorf("reading --ca-file: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pemBytes) {
				return nil, fmt.Errorf("--ca-file %s holds no PEM certificate", caFile)
			}
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tc
		hc.Transport = tr
	}
	opts := apiclient.Options{BaseURL: endpoint, HTTPClient: hc}
	if o.warnings != nil {
		opts.Warnings = func(msg string) { fmt.Fprintf(o.warnings, "warning: %s\n", msg) }
	}
	c, err := apiclient.New(cs, opts)
	if err != nil {
		return nil, fmt.Errorf("connecting to the service: %w", err)
	}
	o.url = endpoint
	if o.url == "" {
		o.url = "https://" + c.HostName()
	}
	return c, nil
}

// adminHint says how to fix the commonest first-use failures: nothing
// listening on the cloud's port 443 (dpsd's API is on 8443), and a server
// certificate signed by a CA the command was not given.
func adminHint(err error, serviceURL string) string {
	var unknownCA x509.UnknownAuthorityError
	if errors.As(err, &unknownCA) {
		return fmt.Sprintf("the service's certificate is signed by an authority this command does not trust: "+
			"pass --ca-file or set $%s to the server's CA (the development CA is ca.pem in dpsd's data directory)", adminCAFileEnv)
	}
	var hostErr x509.HostnameError
	if errors.As(err, &hostErr) {
		return fmt.Sprintf("the service's certificate is not valid for %s: use a name it covers in --endpoint/$%s (dpsd's development certificate covers tls-names, default localhost and 127.0.0.1)",
			hostErr.Host, adminEndpointEnv)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return ""
	}
	u, perr := url.Parse(serviceURL)
	if perr != nil || u.Host == "" {
		return ""
	}
	port := u.Port()
	if port == "" || port == "443" {
		return fmt.Sprintf("nothing listens on %s: dpsd's service API listens on :8443 by default (api-addr): "+
			"set $%s=https://%s or pass --endpoint", net.JoinHostPort(u.Hostname(), "443"), adminEndpointEnv, net.JoinHostPort(u.Hostname(), "8443"))
	}
	return fmt.Sprintf("nothing listens on %s: is dpsd serve running, with this api-addr? (--endpoint or $%s)", u.Host, adminEndpointEnv)
}

// adminCmd is one parsed invocation of an admin subcommand.
type adminCmd struct {
	name   string
	fs     *flag.FlagSet
	opts   adminOpts
	stdout io.Writer
	stderr io.Writer
}

// newAdminCmd creates the flag set of a subcommand with the common flags.
func newAdminCmd(name string, stdout, stderr io.Writer) *adminCmd {
	c := &adminCmd{name: name, stdout: stdout, stderr: stderr}
	c.opts.warnings = stderr
	c.fs = flag.NewFlagSet(name, flag.ContinueOnError)
	c.fs.SetOutput(stderr)
	c.opts.register(c.fs)
	return c
}

// parse parses args, allowing flags after positional arguments, and checks
// the number of positional arguments is between min and max.
func (c *adminCmd) parse(args []string, usage string, min, max int) ([]string, error) {
	c.fs.Usage = func() {
		// usage starts with the subcommand; c.name is "group subcommand".
		group, _, _ := strings.Cut(c.name, " ")
		fmt.Fprintf(c.stderr, "usage: dpsd %s %s\n", group, usage)
		c.fs.PrintDefaults()
	}
	var pos []string
	rest := args
	for {
		if err := c.fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, flag.ErrHelp
			}
			return nil, errAdminUsage
		}
		rest = c.fs.Args()
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		rest = rest[1:]
	}
	if len(pos) < min || len(pos) > max {
		c.fs.Usage()
		return nil, errAdminUsage
	}
	return pos, nil
}

// exit turns an error into an exit code, printing it.
func (c *adminCmd) exit(err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return adminExitOK
	case errors.Is(err, errAdminUsage):
		return adminExitUsage
	}
	fmt.Fprintf(c.stderr, "dpsd %s: %v\n", c.name, err)
	if hint := adminHint(err, c.opts.url); hint != "" {
		fmt.Fprintf(c.stderr, "  hint: %s\n", hint)
	}
	return adminExitFail
}

// adminPrintJSON writes v as indented JSON.
func adminPrintJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("writing JSON: %w", err)
	}
	return nil
}

// adminTable writes aligned columns.
type adminTable struct{ tw *tabwriter.Writer }

// newAdminTable starts a table with a header row.
func newAdminTable(w io.Writer, header ...string) *adminTable {
	t := &adminTable{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

// row writes one row; empty cells are shown as "-".
func (t *adminTable) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(cells[i])
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

// flush writes the table out.
func (t *adminTable) flush() error { return t.tw.Flush() }

// adminFmtTime renders a time for tables ("" when zero).
func adminFmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// adminDispatch runs the subcommand named by args[0] from cmds.
func adminDispatch(ctx context.Context, group string, args []string, stdout, stderr io.Writer,
	cmds map[string]func(ctx context.Context, c *adminCmd, args []string) error, order []string) int {
	usage := func() {
		fmt.Fprintf(stderr, "usage: dpsd %s <%s> [flags] ...\n", group, strings.Join(order, "|"))
	}
	if len(args) == 0 {
		usage()
		return adminExitUsage
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage()
		return adminExitOK
	}
	fn, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "dpsd %s: unknown command %q\n", group, args[0])
		usage()
		return adminExitUsage
	}
	c := newAdminCmd(group+" "+args[0], stdout, stderr)
	return c.exit(fn(ctx, c, args[1:]))
}

// adminShow is the show subcommand of a record kind: it reads the record
// named by the one argument (idName in the usage line) and prints it. When
// withKeys is not nil the subcommand has --show-keys, which fills in the
// record's symmetric keys with withKeys (the service's reads never carry them).
func adminShow[T any](ctx context.Context, c *adminCmd, args []string, idName string,
	get func(*apiclient.Client, context.Context, string) (T, error),
	withKeys func(context.Context, *apiclient.Client, T) error, print func(*adminCmd, T) error) error {
	usage := "show " + idName + " [--json]"
	var showKeys *bool
	if withKeys != nil {
		showKeys = c.fs.Bool("show-keys", false, "also show the symmetric keys (needs a connection string whose policy has the write right)")
		usage += " [--show-keys]"
	}
	pos, err := c.parse(args, usage, 1, 1)
	if err != nil {
		return err
	}
	cl, err := c.opts.client()
	if err != nil {
		return err
	}
	v, err := get(cl, ctx, pos[0])
	if err != nil {
		return err
	}
	if showKeys != nil && *showKeys {
		if err := withKeys(ctx, cl, v); err != nil {
			return err
		}
	}
	return print(c, v)
}

// adminPrintKeys adds the rows of symmetric keys to a field list: the keys
// when k holds them, else a pointer to --show-keys.
func adminPrintKeys(t *adminTable, k *store.SymmetricKeyAttestation) {
	if k.PrimaryKey == "" && k.SecondaryKey == "" {
		t.row("keys:", "not shown (--show-keys)")
		return
	}
	t.row("primaryKey:", k.PrimaryKey)
	t.row("secondaryKey:", k.SecondaryKey)
}

// adminDelete is the delete subcommand of a record kind (what names it in
// messages): it deletes the record named by the one argument, only while it
// still has the --etag when one is given.
func adminDelete(ctx context.Context, c *adminCmd, args []string, what, idName string,
	del func(cl *apiclient.Client, ctx context.Context, id, etag string) error) error {
	etag := c.fs.String("etag", "", "delete only if the "+what+" still has this etag")
	pos, err := c.parse(args, "delete "+idName+" [--etag E]", 1, 1)
	if err != nil {
		return err
	}
	cl, err := c.opts.client()
	if err != nil {
		return err
	}
	if err := del(cl, ctx, pos[0], *etag); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "deleted %s %s\n", what, pos[0])
	return nil
}
