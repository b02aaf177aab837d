package loadgen

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tpmdps/dpsd/attest"
)

// Phases of a provisioning, the keys of Report.Phases. A TPM device goes
// through all of them; a symmetric device through connect, register, poll.
const (
	PhaseConnect   = "connect"   // TCP (+TLS) connect, CONNECT/CONNACK, SUBSCRIBE/SUBACK
	PhaseChallenge = "challenge" // register with tpm on the restricted session -> 401 + blob
	PhaseActivate  = "activate"  // the software TPM opens the blob (client CPU only)
	PhaseReconnect = "reconnect" // connect again with the TPM-signed SAS token
	PhaseRegister  = "register"  // register -> 202 (or a final 200)
	PhasePoll      = "poll"      // polls until assigned (retry-after waits included)
	PhaseFinish    = "finish"    // the software TPM opens the hub key blob (VerifyHubKey)
	PhaseTotal     = "total"     // the whole provisioning
)

// numPhases is the number of phases, PhaseTotal included.
const numPhases = 8

// Phases lists the phases in report order.
func Phases() []string {
	return []string{PhaseConnect, PhaseChallenge, PhaseActivate, PhaseReconnect, PhaseRegister, PhasePoll, PhaseFinish, PhaseTotal}
}

// phaseIndex is the position of phase in Phases.
func phaseIndex(phase string) int {
	switch phase {
	case PhaseConnect:
		return 0
	case PhaseChallenge:
		return 1
	case PhaseActivate:
		return 2
	case PhaseReconnect:
		return 3
	case PhaseRegister:
		return 4
	case PhasePoll:
		return 5
	case PhaseFinish:
		return 6
	}
	return 7
}

// APIVersion is the DPS api-version the simulated devices send.
const APIVersion = "2021-06-01"

// maxThrottleRetries bounds the 429 retries of one request.
const maxThrottleRetries = 20

// registerTopic and pollTopic are the DPS request topics (docs/protocol.md section 3).
func registerTopic(rid string) string {
	return "$dps/registrations/PUT/iotdps-register/?$rid=" + rid
}

func pollTopicFor(operationID string) func(string) string {
	return func(rid string) string {
		return "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=" + rid + "&operationId=" + operationID
	}
}

// timing records the phase durations of one provisioning.
type timing struct {
	d [numPhases]time.Duration
	// set marks the phases that happened.
	set [numPhases]bool
}

func (t *timing) add(phase string, d time.Duration) {
	i := phaseIndex(phase)
	t.d[i] += d
	t.set[i] = true
}

// opBody is the part of a DPS answer body the load generator reads.
type opBody struct {
	OperationID       string `json:"operationId"`
	Status            string `json:"status"`
	AuthenticationKey string `json:"authenticationKey"`
	KeyName           string `json:"keyName"`
	RegistrationState *struct {
		Status      string `json:"status"`
		AssignedHub string `json:"assignedHub"`
		TPM         *struct {
			AuthenticationKey string `json:"authenticationKey"`
		} `json:"tpm"`
		IssuedCertificateChain []string `json:"issuedCertificateChain"`
	} `json:"registrationState"`
}

// runner provisions devices against one target with the settings of a run.
type runner struct {
	cfg       *Config
	throttled func() // counts a 429
}

// phaseErr sets the phase of err (an *Error, or wrapped into one).
func phaseErr(phase string, err error) error {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Kind: KindProtocol, Err: err}
	}
	if e.Phase == "" {
		e.Phase = phase
	}
	return e
}

// session opens a connection for d with password (none: a restricted TPM
// session) and subscribes.
func (r *runner) session(ctx context.Context, d *Device, password string) (*mqttConn, error) {
	c, err := dialMQTT(ctx, r.cfg.Addr, r.cfg.TLS, r.cfg.Timeout)
	if err != nil {
		return nil, err
	}
	user := r.cfg.IDScope + "/registrations/" + d.RegistrationID + "/api-version=" + APIVersion + "&ClientVersion=dps-load"
	if err := c.connect(d.RegistrationID, user, password, true); err != nil {
		c.c.Close()
		return nil, err
	}
	return c, nil
}

// call makes one request, retrying 429 answers after their retry-after.
func (r *runner) call(ctx context.Context, c *mqttConn, topicFor func(string) string, body []byte) (answer, error) {
	for i := 0; ; i++ {
		a, err := c.request(topicFor, body)
		if err != nil || a.status != 429 || i == maxThrottleRetries {
			return a, err
		}
		r.throttled()
		wait := max(a.retryAfter, 100*time.Millisecond)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return a, &Error{Kind: KindCanceled, Err: ctx.Err()}
		case <-t.C:
		}
	}
}

// provision runs one full provisioning of d and records its phases in tm.
func (r *runner) provision(ctx context.Context, d *Device, tm *timing) (err error) {
	start := time.Now()
	defer func() {
		if err == nil {
			tm.add(PhaseTotal, time.Since(start))
		}
	}()
	resource := attest.RegistrationResource(r.cfg.IDScope, d.RegistrationID)
	password := ""
	if d.Kind == Symmetric {
		password = attest.SignSAS(d.SymmetricKey, resource, time.Now().Add(time.Hour), "registration")
	}

	t := time.Now()
	c, err := r.session(ctx, d, password)
	if err != nil {
		return phaseErr(PhaseConnect, err)
	}
	tm.add(PhaseConnect, time.Since(t))

	if d.Kind != Symmetric {
		t = time.Now()
		a, err := r.call(ctx, c, registerTopic, d.registerBody)
		c.close()
		if err != nil {
			return phaseErr(PhaseChallenge, err)
		}
		if a.status != 401 {
			return phaseErr(PhaseChallenge, statusError(a, "401 with a challenge"))
		}
		var ch opBody
		if err := json.Unmarshal(a.body, &ch); err != nil || ch.AuthenticationKey == "" || ch.KeyName == "" {
			return phaseErr(PhaseChallenge, &Error{Kind: KindProtocol, Err: fmt.Errorf("401 without authenticationKey and keyName: %q", a.body)})
		}
		tm.add(PhaseChallenge, time.Since(t))

		t = time.Now()
		blob, err := base64.StdEncoding.DecodeString(ch.AuthenticationKey)
		if err != nil {
			return phaseErr(PhaseActivate, &Error{Kind: KindProtocol, Err: err})
		}
		key, err := d.TPM.Activate(blob)
		if err != nil {
			return phaseErr(PhaseActivate, &Error{Kind: KindActivate, Err: err})
		}
		sas := attest.SignSAS(key, resource, time.Now().Add(time.Hour), ch.KeyName)
		tm.add(PhaseActivate, time.Since(t))

		t = time.Now()
		c, err = r.session(ctx, d, sas)
		if err != nil {
			return phaseErr(PhaseReconnect, err)
		}
		tm.add(PhaseReconnect, time.Since(t))
	}
	defer c.close()

	t = time.Now()
	a, err := r.call(ctx, c, registerTopic, d.registerBody)
	if err != nil {
		return phaseErr(PhaseRegister, err)
	}
	tm.add(PhaseRegister, time.Since(t))
	var op opBody
	if a.status != 200 && a.status != 202 {
		return phaseErr(PhaseRegister, statusError(a, "202"))
	}
	if err := json.Unmarshal(a.body, &op); err != nil {
		return phaseErr(PhaseRegister, &Error{Kind: KindProtocol, Err: err})
	}

	t = time.Now()
	for a.status == 202 {
		if op.OperationID == "" {
			return phaseErr(PhasePoll, &Error{Kind: KindProtocol, Err: errors.New("202 without operationId")})
		}
		if wait := a.retryAfter; wait > 0 {
			tw := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				tw.Stop()
				return phaseErr(PhasePoll, &Error{Kind: KindCanceled, Err: ctx.Err()})
			case <-tw.C:
			}
		}
		id := op.OperationID
		if a, err = r.call(ctx, c, pollTopicFor(id), nil); err != nil {
			return phaseErr(PhasePoll, err)
		}
		if a.status != 200 && a.status != 202 {
			return phaseErr(PhasePoll, statusError(a, "200"))
		}
		op = opBody{}
		if err := json.Unmarshal(a.body, &op); err != nil {
			return phaseErr(PhasePoll, &Error{Kind: KindProtocol, Err: err})
		}
		if op.OperationID == "" {
			op.OperationID = id
		}
	}
	tm.add(PhasePoll, time.Since(t))
	if op.Status != "assigned" || op.RegistrationState == nil || op.RegistrationState.AssignedHub == "" {
		return phaseErr(PhasePoll, &Error{Kind: "not-assigned", Err: fmt.Errorf("final status %q", op.Status)})
	}
	if d.CertificateKey != nil && len(op.RegistrationState.IssuedCertificateChain) == 0 {
		return phaseErr(PhasePoll, &Error{Kind: KindProtocol, Err: errors.New("assigned without the certificate asked for")})
	}
	if d.Kind != Symmetric && r.cfg.VerifyHubKey {
		t = time.Now()
		rs := op.RegistrationState
		if rs.TPM == nil || rs.TPM.AuthenticationKey == "" {
			return phaseErr(PhaseFinish, &Error{Kind: KindProtocol, Err: errors.New("assigned without tpm.authenticationKey")})
		}
		blob, err := base64.StdEncoding.DecodeString(rs.TPM.AuthenticationKey)
		if err != nil {
			return phaseErr(PhaseFinish, &Error{Kind: KindProtocol, Err: err})
		}
		if _, err := d.TPM.Activate(blob); err != nil {
			return phaseErr(PhaseFinish, &Error{Kind: KindActivate, Err: err})
		}
		tm.add(PhaseFinish, time.Since(t))
	}
	return nil
}

// baseline runs the packets of one provisioning of d against a bare
// broker (cmd/dps-load/internal/barebroker): the same connects and round trips, no
// crypto on either side. A TPM device: connect, one request, disconnect,
// connect with a password, two requests; a symmetric device: connect with
// a password, two requests.
func (r *runner) baseline(ctx context.Context, d *Device, tm *timing) error {
	start := time.Now()
	t := start
	pw := "SharedAccessSignature sr=x&sig=y&se=1"
	first := pw
	if d.Kind != Symmetric {
		first = ""
	}
	c, err := r.session(ctx, d, first)
	if err != nil {
		return phaseErr(PhaseConnect, err)
	}
	tm.add(PhaseConnect, time.Since(t))
	if d.Kind != Symmetric {
		t = time.Now()
		a, err := c.request(registerTopic, d.registerBody)
		c.close()
		if err != nil {
			return phaseErr(PhaseChallenge, err)
		}
		if a.status != 200 {
			return phaseErr(PhaseChallenge, statusError(a, "200"))
		}
		tm.add(PhaseChallenge, time.Since(t))
		t = time.Now()
		if c, err = r.session(ctx, d, pw); err != nil {
			return phaseErr(PhaseReconnect, err)
		}
		tm.add(PhaseReconnect, time.Since(t))
	}
	defer c.close()
	t = time.Now()
	if a, err := c.request(registerTopic, d.registerBody); err != nil || a.status != 200 {
		if err == nil {
			err = statusError(a, "200")
		}
		return phaseErr(PhaseRegister, err)
	}
	tm.add(PhaseRegister, time.Since(t))
	t = time.Now()
	if a, err := c.request(pollTopicFor("x"), nil); err != nil || a.status != 200 {
		if err == nil {
			err = statusError(a, "200")
		}
		return phaseErr(PhasePoll, err)
	}
	tm.add(PhasePoll, time.Since(t))
	tm.add(PhaseTotal, time.Since(start))
	return nil
}
