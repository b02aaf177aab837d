package device

import (
	"errors"
	"fmt"
	"strings"
)

// Phase names the step of a provisioning in which an error happened, so that
// callers (and the CLI's exit codes) can tell a refusal from a transport fault.
type Phase string

// Phases of Provision, in the order a TPM device goes through them. Devices
// that need no challenge skip challenge, activate and reconnect.
const (
	// PhaseAttest: reading the device's identity (the TPM's EK and SRK) before connecting.
	PhaseAttest Phase = "attest"
	// PhaseConnect: the first MQTT connection and subscription.
	PhaseConnect Phase = "connect"
	// PhaseChallenge: the register request that asks for (or refuses) a TPM challenge.
	PhaseChallenge Phase = "challenge"
	// PhaseActivate: opening an activation blob in the TPM and signing with it.
	PhaseActivate Phase = "activate"
	// PhaseReconnect: the authenticated MQTT connection after a challenge.
	PhaseReconnect Phase = "reconnect"
	// PhaseRegister: the authenticated register request.
	PhaseRegister Phase = "register"
	// PhasePoll: polling the operation until it is final.
	PhasePoll Phase = "poll"
)

// Sentinel errors carried in Error.Err (test with errors.Is).
var (
	// ErrNotAssigned: the registration finished with status failed or
	// disabled; the Result is returned alongside the error.
	ErrNotAssigned = errors.New("device: registration not assigned")
	// ErrConnectRefused: the broker refused the CONNECT (CONNACK return code
	// 1, 2, 4 or 5: bad credentials, not authorized, identifier rejected).
	ErrConnectRefused = errors.New("device: connection refused by broker")
	// ErrServerUnavailable: CONNACK "server unavailable" (a capacity limit,
	// such as the broker's cap on challenge sessions); retried with backoff.
	ErrServerUnavailable = errors.New("device: broker unavailable")
	// ErrConnectionLost: the MQTT connection dropped while waiting.
	ErrConnectionLost = errors.New("device: connection lost")
	// ErrRetriesExhausted: 429 or 5xx answers outlasted Backoff.MaxAttempts.
	ErrRetriesExhausted = errors.New("device: retries exhausted")
	// ErrProtocol: the broker sent something this client cannot interpret.
	ErrProtocol = errors.New("device: protocol error")
	// ErrTPM marks failures inside the TPM or its transport, so that a caller
	// can tell a broken TPM from a refusal (wrapped together with the cause).
	ErrTPM = errors.New("device: TPM operation failed")
)

// Error is the error Provision returns. It says in which phase it happened
// and, when the broker answered, the HTTP-like status and DPS errorCode.
// Use errors.As to get it and errors.Is on it for the sentinels above or the
// underlying cause (context.DeadlineExceeded, a tpm2.TPMRC, ...).
type Error struct {
	Phase      Phase  // step of the flow that failed
	Status     int    // response status from the topic ($dps/registrations/res/{status}/); 0 if none
	ErrorCode  int    // errorCode from the response body (e.g. 401002); 0 if none
	TrackingID string // trackingId from the response body, for the operator's logs
	Message    string // message from the response body or a description
	Err        error  // the cause; may be nil when Status says it all
	// RegistrationID is the id the device registered as, set on answers
	// from the service (a 401 names it: which id was refused).
	RegistrationID string
}

// Error formats the phase, status, code and message.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "device: %s", e.Phase)
	if e.Status != 0 {
		fmt.Fprintf(&b, ": status %d", e.Status)
	}
	if e.ErrorCode != 0 {
		fmt.Fprintf(&b, " (errorCode %d)", e.ErrorCode)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.Status == 401 && e.RegistrationID != "" {
		fmt.Fprintf(&b, ": registration id %q is not enrolled, or not with this device's key or EK, and no enrollment group admits it (for a TPM group: its EK certificate and the id derived from its EK)", e.RegistrationID)
	}
	if e.TrackingID != "" {
		fmt.Fprintf(&b, " [trackingId %s]", e.TrackingID)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Refused reports whether the broker refused the device (a CONNACK refusal,
// a permanent 3xx/4xx answer other than 429, or a final status other than
// assigned), as opposed to a transport, timeout or TPM failure.
func (e *Error) Refused() bool {
	if errors.Is(e.Err, ErrNotAssigned) || errors.Is(e.Err, ErrConnectRefused) {
		return true
	}
	return e.Status >= 300 && e.Status != 429 && e.Status < 500
}
