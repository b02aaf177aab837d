package hooks

import (
	"time"

	"github.com/tpmdps/dpsd/internal/refusal"
)

// Phases of Metrics.Observe.
const (
	// PhaseConnect is authenticating a CONNECT with the service.
	PhaseConnect = "connect"
	// PhaseChallenge is a register request on a restricted session (the TPM challenge).
	PhaseChallenge = "challenge"
	// PhaseRegister is a register request on an authenticated session.
	PhaseRegister = "register"
	// PhasePoll is an operation status request.
	PhasePoll = "poll"
)

// Reasons of Metrics.ConnectRefused for refusals the hook decides itself
// (the service's own refusals are reported by provision.Observer).
const (
	RefusedRestrictedCap  = "restricted_session_cap"
	RefusedWeakerTakeover = "weaker_takeover"
	RefusedShuttingDown   = "shutting_down"
)

// Metrics receives the hook's measurements. Methods must be quick and safe
// for concurrent use. A nil Config.Metrics turns measurement off.
type Metrics interface {
	// Observe reports how long one phase of a request took (status is the
	// DPS answer's status; 0 for a CONNECT that was accepted, 401 refused).
	Observe(phase string, status int, elapsed time.Duration)
	// ConnectRefused reports a CONNECT refused by the hook itself.
	ConnectRefused(reason string)
	// Counter counts connections refused by a per-address limit (of the
	// broker's listeners and of this hook).
	refusal.Counter
}

// observe reports a phase when metrics are on.
func (h *Hook) observe(phase string, status int, start time.Time) {
	if h.metrics != nil {
		h.metrics.Observe(phase, status, h.now().Sub(start))
	}
}

// observeConnect reports the authentication of a CONNECT (status 401 when refused).
func (h *Hook) observeConnect(err error, start time.Time) {
	status := 0
	if err != nil {
		status = 401
	}
	h.observe(PhaseConnect, status, start)
}

// refused reports a hook refusal when metrics are on.
func (h *Hook) refused(reason string) {
	if h.metrics != nil {
		h.metrics.ConnectRefused(reason)
	}
}
