package loadgen

import "fmt"

// Kinds of failed provisionings, the keys of Report.Errors.
const (
	KindDial     = "dial"     // TCP connect failed
	KindTLS      = "tls"      // TLS handshake failed
	KindNetwork  = "network"  // read or write failed
	KindTimeout  = "timeout"  // no answer within Config.Timeout
	KindClosed   = "closed"   // the broker closed the connection
	KindRefused  = "refused"  // CONNACK refused the connection
	KindProtocol = "protocol" // an answer that does not parse
	KindActivate = "activate" // the software TPM could not open a blob
	KindStatus   = "status"   // an unexpected status; the kind is "status-NNN"
	KindCanceled = "canceled" // the run ended while the provisioning was in flight
)

// Error is a failed step of a simulated device. Kind classifies it for the
// report; Phase is where it happened.
type Error struct {
	// Kind is one of the Kind constants, or "status-NNN".
	Kind string
	// Phase is the provisioning phase (PhaseConnect, ...); set by the engine.
	Phase string
	// Err is the cause.
	Err error
}

// Error implements error.
func (e *Error) Error() string {
	if e.Phase != "" {
		return fmt.Sprintf("loadgen: %s: %s: %v", e.Phase, e.Kind, e.Err)
	}
	return fmt.Sprintf("loadgen: %s: %v", e.Kind, e.Err)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// statusError is an unexpected answer status.
func statusError(a answer, want string) *Error {
	msg := string(a.body)
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return &Error{Kind: fmt.Sprintf("%s-%d", KindStatus, a.status), Err: fmt.Errorf("want %s, got %d: %s", want, a.status, msg)}
}
