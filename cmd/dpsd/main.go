// Command dpsd is the self-hosted device provisioning service: `dpsd serve`
// runs the MQTT broker that devices provision through (Azure DPS dialect,
// with TPM attestation); the other subcommands administer it.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/tpmdps/dpsd/internal/version"
)

// command is one subcommand. To add one, add a line to commands.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// commands is the dispatch table, in help order.
func commands() []command {
	return []command{
		{"serve", "run the provisioning broker (MQTT, TLS, WebSocket)", runServe},
		{"enrollment", "manage individual enrollments through the service API", runEnrollmentCmd},
		{"group", "manage enrollment groups through the service API", runGroupCmd},
		{"registration", "show or delete device registrations through the service API", runRegistrationCmd},
		{"hub", "link, list and unlink IoT hubs (allocation weights, hand-off to the hub's registry) through the service API", runHubCmd},
		{"backup", "write a consistent hot backup of the store through the service API", runBackup},
		{"cluster", "write the secrets the nodes of a cluster share, once (cluster init DIR)", runClusterCmd},
		{"store", "copy an installation to another store (store copy --from bolt:... --to etcd://...), restore an etcd backup, check a store", runStoreCmd},
		{"ca", "print the chain of the CA that issues device certificates (ca export), for MQTT brokers to trust", runCACmd},
		{"config", "print the effective configuration (config print), secrets redacted, or a service connection string (config connection-string)", runConfigCmd},
		{"health", "probe a running server's /readyz (for container health checks)", runHealth},
		{"version", "print the version", runVersion},
		{"help", "print this help", nil}, // handled by run
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches args[0] to its subcommand and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name == name && c.run != nil {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "dpsd: unknown command %q\n\n", name)
	usage(stderr)
	return 2
}

// usage prints the command list.
func usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: dpsd <command> [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-13s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'dpsd <command> --help' for a command's flags.\n")
}

// runVersion prints the module version and VCS revision of the binary.
func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "usage: dpsd version")
		return 2
	}
	fmt.Fprintln(stdout, versionString())
	return 0
}

// versionString describes the build.
func versionString() string { return version.String("dpsd") }

// settingsRead ends the reading of a command's settings the same way for
// every command: on -h the help in usage goes to stdout (exit 0), on an error
// the usage and the error go to stderr (exit 2). done is false when the
// command goes on.
func settingsRead(name string, err error, usage *bytes.Buffer, stdout, stderr io.Writer) (code int, done bool) {
	switch {
	case err == nil:
		return 0, false
	case errors.Is(err, flag.ErrHelp):
		_, _ = stdout.Write(usage.Bytes())
		return 0, true
	default:
		_, _ = stderr.Write(usage.Bytes())
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2, true
	}
}
