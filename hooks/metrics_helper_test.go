package hooks_test

import (
	"context"
	"strings"

	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/provision"
)

// observer records what the hook (hooks.Metrics) and the service
// (provision.Observer) report.
type observer struct{ testkit.Metrics }

// Registered is the part of provision.Observer these tests do not count.
func (*observer) Registered(context.Context, provision.RegistrationEvent) {}

// refusedFor sums the per-address refusals of reason on every listener.
func refusedFor(o *observer, reason string) int {
	n := 0
	for k, v := range o.ConnectionsRefused() {
		if strings.HasSuffix(k, "/"+reason) {
			n += v
		}
	}
	return n
}
