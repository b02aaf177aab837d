package device

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestErrorTyping(t *testing.T) {
	cause := context.DeadlineExceeded
	var err error = fmt.Errorf("outer: %w", &Error{Phase: PhasePoll, Status: 0, Err: cause})
	var e *Error
	if !errors.As(err, &e) || e.Phase != PhasePoll {
		t.Fatalf("errors.As failed on %v", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cause not reachable through Unwrap")
	}
	if e.Refused() {
		t.Fatalf("a timeout is not a refusal")
	}

	cases := []struct {
		e       *Error
		refused bool
		text    []string
	}{
		{&Error{Phase: PhaseChallenge, Status: 401, ErrorCode: 401002, Message: "unauthorized", TrackingID: "t1"}, true,
			[]string{"challenge", "401", "401002", "unauthorized", "t1"}},
		{&Error{Phase: PhaseRegister, Status: 401, ErrorCode: 401002, RegistrationID: "dev-7"}, true,
			[]string{"register", "401", `registration id "dev-7" is not enrolled`}},
		{&Error{Phase: PhaseRegister, Status: 400, ErrorCode: 400004}, true, []string{"register", "400"}},
		{&Error{Phase: PhaseRegister, Status: 429, Err: ErrRetriesExhausted}, false, []string{"429", "retries exhausted"}},
		{&Error{Phase: PhasePoll, Status: 503, Err: ErrRetriesExhausted}, false, []string{"503"}},
		{&Error{Phase: PhasePoll, Status: 200, Err: ErrNotAssigned}, true, []string{"not assigned"}},
		{&Error{Phase: PhaseReconnect, Err: fmt.Errorf("%w: x", ErrConnectRefused)}, true, []string{"reconnect", "refused"}},
		{&Error{Phase: PhaseConnect, Err: errors.New("dial tcp: refused")}, false, []string{"connect"}},
		{&Error{Phase: PhaseActivate, Err: fmt.Errorf("%w: boom", ErrTPM)}, false, []string{"activate", "TPM"}},
	}
	for _, c := range cases {
		if got := c.e.Refused(); got != c.refused {
			t.Errorf("%v: Refused() = %v, want %v", c.e, got, c.refused)
		}
		for _, s := range c.text {
			if !strings.Contains(c.e.Error(), s) {
				t.Errorf("%q does not mention %q", c.e.Error(), s)
			}
		}
	}
}
