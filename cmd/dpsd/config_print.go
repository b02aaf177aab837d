package main

// dpsd config print [SETTING] [--json] [serve flags]
// dpsd config connection-string [--read-only] [serve flags]

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/tpmdps/dpsd/api"
	"github.com/tpmdps/dpsd/internal/config"
	"github.com/tpmdps/dpsd/internal/datadir"
)

const configUsage = `Usage: dpsd config print [SETTING] [--json] [serve flags]
       dpsd config connection-string [--read-only] [serve flags]

print: the configuration dpsd serve would run with, given the same flags,
DPSD_* environment variables and config file: every setting with its value
and where the value came from (precedence: flags > environment > config
file > defaults; "generated" for the ID scope kept in the data directory).
Secret values are shown as ` + config.Redacted + `. With a SETTING name, only its value
(for scripts: SCOPE=$(dpsd config print id-scope)).

connection-string: the service API connection string of the owner policy
(--read-only: of the read-only policy), built from the data directory's
keys and api-host-name. It is a secret: it is printed only by this command
and kept in the data directory (` + datadir.ConnectionStringFile + `, 0600).
Neither command creates or changes anything.
`

// runConfigCmd runs "dpsd config print|connection-string".
func runConfigCmd(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "print":
			return runConfigPrint(args[1:], os.LookupEnv, stdout, stderr)
		case "connection-string":
			return runConfigConnectionString(args[1:], os.LookupEnv, stdout, stderr)
		case "-h", "--help", "help":
			fmt.Fprint(stdout, configUsage)
			return 0
		}
	}
	fmt.Fprint(stderr, configUsage)
	return 2
}

// configFlag takes a boolean flag (--name, --name=true, --name=false) out of
// args, which are otherwise serve's flags.
func configFlag(args []string, name string) (bool, []string) {
	on := false
	rest := make([]string, 0, len(args))
	for _, a := range args {
		switch a {
		case "-" + name, "--" + name, "-" + name + "=true", "--" + name + "=true":
			on = true
		case "-" + name + "=false", "--" + name + "=false":
			on = false
		default:
			rest = append(rest, a)
		}
	}
	return on, rest
}

// runConfigPrint prints the effective configuration as a table or JSON, or
// the value of the one setting named by a first argument.
func runConfigPrint(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	asJSON, rest := configFlag(args, "json")
	only := ""
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		only, rest = rest[0], rest[1:]
	}
	var out bytes.Buffer
	vals, cfg, err := config.Effective("dpsd config print", configUsage+"\n(serve's settings follow)\n", rest, lookupEnv, &out)
	if code, done := settingsRead("dpsd config print", err, &out, stdout, stderr); done {
		return code
	}
	generatedScope(vals, cfg.DataDir)
	if only != "" {
		for _, v := range vals {
			if v.Name == only {
				fmt.Fprintln(stdout, v.Value)
				return 0
			}
		}
		fmt.Fprintf(stderr, "dpsd config print: no setting %q (dpsd config print lists them)\n", only)
		return 2
	}
	if asJSON {
		if err := adminPrintJSON(stdout, vals); err != nil {
			fmt.Fprintf(stderr, "dpsd config print: %v\n", err)
			return 1
		}
		return 0
	}
	t := newAdminTable(stdout, "SETTING", "VALUE", "SOURCE", "ENV")
	for _, v := range vals {
		val := v.Value
		if val == "" {
			val = `""`
		}
		t.row(v.Name, val, v.Source, v.Env)
	}
	if err := t.flush(); err != nil {
		fmt.Fprintf(stderr, "dpsd config print: %v\n", err)
		return 1
	}
	return 0
}

// generatedScope fills in the ID scope that dpsd generated and keeps in the
// data directory, when no setting names one: the scope serve runs with.
func generatedScope(vals []config.Value, dataDir string) {
	for i := range vals {
		if vals[i].Name != "id-scope" || vals[i].Value != "" {
			continue
		}
		if s, err := datadir.ReadSecrets(dataDir); err == nil {
			vals[i].Value, vals[i].Source = s.IDScope, config.SourceGenerated
		}
	}
}

// runConfigConnectionString prints a service connection string built from
// the data directory's policy keys and the configured api-host-name.
func runConfigConnectionString(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	readOnly, rest := configFlag(args, "read-only")
	var out bytes.Buffer
	cfg, err := config.Load("dpsd config connection-string", configUsage+"\n(serve's settings follow)\n", rest, lookupEnv, &out)
	if code, done := settingsRead("dpsd config connection-string", err, &out, stdout, stderr); done {
		return code
	}
	s, err := datadir.ReadSecrets(cfg.DataDir)
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stderr, "dpsd config connection-string: no keys in the data directory %s yet: start dpsd serve once (it generates them), or pass --data-dir\n", cfg.DataDir)
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "dpsd config connection-string: %v\n", err)
		return 1
	}
	policy, key := api.DefaultPolicyName, s.ServicePolicyKey
	if readOnly {
		policy, key = api.ReadOnlyPolicyName, s.ServiceReadPolicyKey
	}
	if len(key) == 0 {
		fmt.Fprintf(stderr, "dpsd config connection-string: %s has no key of %s yet: start dpsd serve once (it adds it)\n", cfg.DataDir, policy)
		return 1
	}
	fmt.Fprintln(stdout, datadir.ConnectionString(cfg.APIHostName, policy, key))
	return 0
}
