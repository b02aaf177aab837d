// Package refusal reports connections refused by a per-address limit, which
// would otherwise vanish without a trace: every refusal is counted (by
// listener and reason, for dpsd_connections_refused_total) and a warning
// naming the address is logged at most once per address per interval, so
// that a flood shows up in the log without flooding it.
package refusal

import (
	"log/slog"
	"time"

	"github.com/tpmdps/dpsd/internal/ratelimit"
)

// Reasons a connection is refused: a small fixed set, usable as metric labels.
const (
	// AddressCap: the address has as many connections open as allowed.
	AddressCap = "per_address_cap"
	// AddressRate: the address opened connections faster than allowed.
	AddressRate = "per_address_rate"
	// RestrictedAddressCap: the address holds as many restricted (TPM
	// challenge) sessions as allowed; the CONNECT got CONNACK 3.
	RestrictedAddressCap = "restricted_per_address_cap"
	// AuthFailureBudget: the address had too many CONNECTs refused lately;
	// the next one got CONNACK 3 without being authenticated.
	AuthFailureBudget = "auth_failure_budget"
)

// Defaults of New.
const (
	// LogInterval is how often at most one warning names an address.
	LogInterval = time.Minute
	// maxLoggedAddresses bounds the addresses remembered for LogInterval.
	maxLoggedAddresses = 4096
)

// Counter counts refusals; metrics.Metrics implements it. Calls must be
// quick and safe for concurrent use.
type Counter interface {
	// ConnectionRefused counts one connection refused on listener for reason.
	ConnectionRefused(listener, reason string)
}

// Reporter counts and logs refusals. Safe for concurrent use; a nil
// Reporter does nothing.
type Reporter struct {
	log   *slog.Logger
	count Counter // nil: not counted
	gate  *ratelimit.Gate
}

// New returns a Reporter logging to log (nil: discard) and counting with c
// (nil: not counted). now is the clock (nil: time.Now).
func New(log *slog.Logger, c Counter, now func() time.Time) *Reporter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reporter{log: log, count: c, gate: ratelimit.NewGate(LogInterval, maxLoggedAddresses, now)}
}

// Refused reports one connection from address (a per-address limit key,
// ratelimit.AddressKey) refused on listener for reason. The warning says
// how many refusals of the address went unlogged since its last one; when
// the log has named too many addresses within the interval, new ones are
// only counted until some expire.
func (r *Reporter) Refused(listener, reason, address string) {
	if r == nil {
		return
	}
	if r.count != nil {
		r.count.ConnectionRefused(listener, reason)
	}
	if ok, unlogged := r.gate.Pass(address); ok {
		r.log.Warn("connection refused by a per-address limit", "listener", listener, "reason", reason,
			"address", address, "unloggedSinceLast", unlogged, "logInterval", LogInterval)
	}
}
