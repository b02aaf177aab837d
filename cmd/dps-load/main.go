// Command dps-load is the load tool of dpsd: it simulates many devices
// provisioning concurrently against a running dpsd over MQTT (plain TCP or
// TLS) and reports provisionings per second, latency per phase, errors by
// kind and the server's CPU time per provisioning, beside a baseline of the
// same packets against a bare broker.
//
// Usage:
//
//	dps-load run  [target flags] [--tpm-rsa N] [--tpm-ecc N] [--symmetric N]
//	              [--count N | --duration D] [--concurrency C] [--ramp D]
//	              [--baseline] [--json] [--cleanup]
//	dps-load idle [target flags] --connections N [--mode restricted|authenticated] [--cleanup]
//	dps-load bare-broker [--tcp-addr A] [--tls-addr A] [--reply-size N]
//
// Target flags: --addr (MQTT host:port), --tls, --data-dir (dpsd's data
// directory, default ./data: the service connection string, the development
// CA and the ID scope are read from it), or --connection-string, --api-url,
// --ca-file and --id-scope; --server-pid (default: the process listening on
// --addr's port). Devices are enrolled through the service API (bulk) first;
// --cleanup deletes those enrollments (and the registration records) at the
// end, also after an interrupt.
//
// The software TPMs hold their EK and SRK private keys in memory
// (softtpm); the server cannot tell them from real TPMs. Server
// CPU is read from /proc/<pid>/stat: on a small machine the load tool
// competes with the server, and CPU per provisioning is the figure that
// shows the server's capacity.
//
// Exit codes: 0 success (every provisioning succeeded), 1 usage or setup
// error, 2 some provisionings failed.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
