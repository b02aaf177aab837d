package main

// dpsd config print [--json] [serve flags]

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/tpmdps/dpsd/internal/config"
)

const configPrintUsage = `Usage: dpsd config print [--json] [serve flags]

Prints the configuration dpsd serve would run with, given the same flags,
DPSD_* environment variables and config file: every setting with its value
and where the value came from (precedence: flags > environment > config
file > defaults). Secret values are shown as ` + config.Redacted + `.
`

// runConfigCmd runs "dpsd config ..."; print is its one subcommand.
func runConfigCmd(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "print" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(stdout, configPrintUsage)
			return 0
		}
		fmt.Fprint(stderr, configPrintUsage)
		return 2
	}
	return runConfigPrint(args[1:], os.LookupEnv, stdout, stderr)
}

// runConfigPrint prints the effective configuration as a table or JSON.
func runConfigPrint(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	asJSON := false
	rest := make([]string, 0, len(args))
	for _, a := range args {
		switch a {
		case "-json", "--json", "-json=true", "--json=true":
			asJSON = true
		case "-json=false", "--json=false":
			asJSON = false
		default:
			rest = append(rest, a)
		}
	}
	var out bytes.Buffer
	vals, _, err := config.Effective("dpsd config print", configPrintUsage+"\n(serve's settings follow)\n", rest, lookupEnv, &out)
	if errors.Is(err, flag.ErrHelp) {
		_, _ = stdout.Write(out.Bytes())
		return 0
	}
	if err != nil {
		_, _ = stderr.Write(out.Bytes())
		fmt.Fprintf(stderr, "dpsd config print: %v\n", err)
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
