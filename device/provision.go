package device

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/tpmdps/dpsd/attest"
)

// maxChallenges bounds how many TPM challenges one Provision answers: one is
// normal, a second is tolerated (the first may have expired during a slow
// activation); beyond that something is wrong and looping would not fix it.
const maxChallenges = 2

// Provision registers the device with the provisioning service and returns
// where it is assigned. It is safe to call concurrently with distinct
// Configs; it keeps no state between calls.
//
// The flow (docs/protocol.md sections 2-5): connect with the Attestation's
// credentials, subscribe, register; a TPM device gets a 401 challenge,
// disconnects, opens it in the TPM and reconnects with a TPM-signed SAS
// token, then registers again; then the operation is polled (honouring
// retry-after) until it is final. 429 and 5xx answers are retried with
// backoff; 3xx-428 answers end it with an *Error. When the final status is
// failed or disabled, Provision returns the Result and an *Error wrapping
// ErrNotAssigned; when the device is assigned but the Attestation cannot
// finish (a TPM failing to import the hub key), it returns the Result and
// an *Error in PhaseActivate. Every error except an invalid Config (ErrInvalidConfig)
// is an *Error.
func Provision(ctx context.Context, cfg Config) (*Result, error) {
	c, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	p := &provisioner{cfg: c}
	return p.run(ctx)
}

// provisioner holds one Provision's state.
type provisioner struct {
	cfg  *resolved
	sess Session
	csr  string // base64 DER certificate signing request; "" for none
}

func (p *provisioner) phase(ph Phase) {
	p.cfg.Logger.Debug("phase", "phase", string(ph))
	if p.cfg.OnPhase != nil {
		p.cfg.OnPhase(ph)
	}
}

func (p *provisioner) run(ctx context.Context) (*Result, error) {
	att := p.cfg.Attestation
	regID := p.cfg.RegistrationID
	if regID == "" {
		idp, ok := att.(IDProvider)
		if !ok {
			return nil, fmt.Errorf("%w: RegistrationID is empty and the attestation provides none", ErrInvalidConfig)
		}
		p.phase(PhaseAttest)
		id, err := idp.DefaultRegistrationID(ctx)
		if err != nil {
			return nil, &Error{Phase: PhaseAttest, Message: "default registration id", Err: err}
		}
		regID = id
	}
	if err := attest.ValidateRegistrationID(regID); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	p.sess = Session{
		IDScope:        p.cfg.IDScope,
		RegistrationID: regID,
		Resource:       attest.RegistrationResource(p.cfg.IDScope, regID),
	}
	if p.cfg.CertificateKey != nil {
		// Signed once, before connecting: a TPM key that cannot sign fails here.
		p.phase(PhaseAttest)
		csr, err := newCSR(p.cfg.CertificateKey, regID)
		if err != nil {
			return nil, &Error{Phase: PhaseAttest, Message: "certificate signing request", Err: err}
		}
		p.csr = csr
	}

	p.phase(PhaseConnect)
	creds, err := att.Credentials(ctx, p.session())
	if err != nil {
		return nil, &Error{Phase: PhaseConnect, Message: "credentials", Err: err}
	}
	challenger, canChallenge := att.(Challenger)
	registerPhase := PhaseRegister
	if canChallenge && creds == (Credentials{}) {
		registerPhase = PhaseChallenge
	}
	// The register body is built before connecting: a TPM that cannot read
	// its keys fails here without touching the network.
	body, err := p.registerBody(ctx, registerPhase)
	if err != nil {
		return nil, err
	}
	firstCreds := creds
	s, err := p.connect(ctx, PhaseConnect, creds)
	if err != nil {
		return nil, err
	}
	defer func() {
		if s != nil {
			s.close()
		}
	}()

	p.phase(registerPhase)
	resp, err := p.send(ctx, s, registerPhase, registerTopic, body)
	startedOver := false
	for challenges := 0; err == nil && resp.Status == 401 && canChallenge; challenges++ {
		eb := parseError(resp.Body)
		if eb.AuthenticationKey == "" || challenges >= maxChallenges {
			break
		}
		blob, derr := base64.StdEncoding.DecodeString(eb.AuthenticationKey)
		if derr != nil || eb.KeyName == "" {
			return nil, &Error{Phase: PhaseChallenge, Status: resp.Status, Message: "malformed challenge",
				Err: fmt.Errorf("%w: authenticationKey or keyName unusable", ErrProtocol)}
		}
		p.cfg.Logger.Debug("challenge received", "keyName", eb.KeyName, "blobBytes", len(blob))
		s.close() // the restricted session is of no further use
		s = nil

		p.phase(PhaseActivate)
		creds, err = challenger.Challenge(ctx, p.session(), Challenge{AuthenticationKey: blob, KeyName: eb.KeyName})
		if err != nil {
			return nil, &Error{Phase: PhaseActivate, Message: "open challenge", Err: err}
		}
		if err := ctx.Err(); err != nil {
			return nil, &Error{Phase: PhaseActivate, Err: err}
		}

		p.phase(PhaseReconnect)
		if s, err = p.connect(ctx, PhaseReconnect, creds); err != nil {
			// A challenge is valid only in the broker run that issued it:
			// a refused reconnect may mean the broker restarted since.
			// Start over once with a new challenge.
			if !errors.Is(err, ErrConnectRefused) || startedOver {
				return nil, err
			}
			startedOver = true
			p.cfg.Logger.Debug("reconnect refused; asking for a new challenge", "error", err)
			p.phase(PhaseConnect)
			if s, err = p.connect(ctx, PhaseConnect, firstCreds); err != nil {
				return nil, err
			}
			registerPhase = PhaseChallenge
			if body, err = p.registerBody(ctx, registerPhase); err != nil {
				return nil, err
			}
			p.phase(registerPhase)
			resp, err = p.send(ctx, s, registerPhase, registerTopic, body)
			continue
		}
		registerPhase = PhaseRegister
		if body, err = p.registerBody(ctx, registerPhase); err != nil {
			return nil, err
		}
		p.phase(registerPhase)
		resp, err = p.send(ctx, s, registerPhase, registerTopic, body)
	}
	if err != nil {
		return nil, err
	}
	if resp.Status >= 300 {
		return nil, answerError(registerPhase, resp, p.sess.RegistrationID)
	}

	res, err := p.poll(ctx, s, registerPhase, resp)
	if err != nil {
		return res, err
	}
	s.close()
	s = nil
	if res.Status != StatusAssigned {
		msg := "registration " + res.Status
		if res.State.ErrorMessage != "" {
			msg += ": " + trunc(res.State.ErrorMessage)
		}
		cause := ErrNotAssigned
		if p.csr != "" && res.State.ErrorMessage == csrNotConfigured {
			cause = fmt.Errorf("%w: %w", ErrNotAssigned, ErrCertificateNotIssued)
		}
		return res, &Error{Phase: PhasePoll, Status: 200, ErrorCode: res.State.ErrorCode, Message: msg, Err: cause}
	}
	if p.csr != "" {
		chain, err := issuedChain(res.State, p.cfg.CertificateKey.Public(), p.sess.RegistrationID)
		if err != nil {
			return res, &Error{Phase: PhasePoll, Status: 200, Message: "issued certificate", Err: err}
		}
		res.CertificateChain, res.IssuedCertificate = chain, describeCertificate(chain)
	}
	if f, ok := att.(Finisher); ok {
		p.phase(PhaseActivate)
		if err := f.Finish(ctx, p.session(), res); err != nil {
			return res, &Error{Phase: PhaseActivate, Message: "finish assigned registration", Err: err}
		}
	}
	p.cfg.Logger.Debug("assigned", "hub", res.AssignedHub, "deviceId", res.DeviceID, "substatus", res.Substatus)
	return res, nil
}

// connect connects, retrying with backoff while the broker answers CONNACK
// "server unavailable" (a capacity limit, not a verdict on the device).
func (p *provisioner) connect(ctx context.Context, phase Phase, creds Credentials) (*session, error) {
	for retry := 0; ; retry++ {
		s, err := connect(ctx, p.cfg, phase, p.sess.RegistrationID, creds)
		if err == nil || !errors.Is(err, ErrServerUnavailable) {
			return s, err
		}
		if retry+1 >= p.cfg.Backoff.MaxAttempts {
			return nil, &Error{Phase: phase, Message: "broker unavailable", Err: fmt.Errorf("%w: %w", ErrRetriesExhausted, err)}
		}
		d := p.cfg.Backoff.Delay(retry, 0)
		p.cfg.Logger.Debug("broker unavailable, retrying", "phase", string(phase), "after", d)
		if err := p.cfg.Sleep(ctx, d); err != nil {
			return nil, &Error{Phase: phase, Message: "waiting to reconnect", Err: err}
		}
	}
}

// session returns the Session with the current time.
func (p *provisioner) session() Session {
	s := p.sess
	s.Now = p.cfg.Now()
	return s
}

// registerBody builds {"registrationId", attestation fields..., "payload"}.
func (p *provisioner) registerBody(ctx context.Context, phase Phase) ([]byte, error) {
	fields := map[string]any{"registrationId": p.sess.RegistrationID}
	if rf, ok := p.cfg.Attestation.(RegisterFielder); ok {
		extra, err := rf.RegisterFields(ctx, p.session())
		if err != nil {
			return nil, &Error{Phase: PhaseAttest, Message: "register fields", Err: err}
		}
		maps.Copy(fields, extra)
	}
	if p.cfg.Payload != nil {
		fields["payload"] = p.cfg.Payload
	}
	if p.csr != "" && phase != PhaseChallenge {
		// The CSR goes on the authenticated register only: a TPM's
		// challenge request is not the one the service issues on.
		fields[csrField(p.cfg.APIVersion)] = p.csr
	}
	b, err := json.Marshal(fields)
	if err != nil {
		return nil, &Error{Phase: phase, Message: "encode register body", Err: err}
	}
	return b, nil
}

// send sends one request, retrying it after 429 and 5xx answers with
// backoff. Any other answer is returned for the caller to interpret.
func (p *provisioner) send(ctx context.Context, s *session, phase Phase, topicFor func(string) string, body []byte) (response, error) {
	for retry := 0; ; retry++ {
		resp, err := s.request(ctx, phase, topicFor, body)
		if err != nil {
			return resp, err
		}
		if resp.Status != 429 && resp.Status < 500 {
			return resp, nil
		}
		if retry+1 >= p.cfg.Backoff.MaxAttempts {
			e := answerError(phase, resp, p.sess.RegistrationID)
			e.Err = ErrRetriesExhausted
			return resp, e
		}
		d := p.cfg.Backoff.Delay(retry, resp.RetryAfter)
		p.cfg.Logger.Debug("retrying", "status", resp.Status, "after", d, "attempt", retry+2)
		if err := p.cfg.Sleep(ctx, d); err != nil {
			return resp, &Error{Phase: phase, Status: resp.Status, Message: "waiting to retry", Err: err}
		}
	}
}

// poll follows an accepted register answer until the operation is final.
func (p *provisioner) poll(ctx context.Context, s *session, phase Phase, resp response) (*Result, error) {
	for {
		op, st, err := parseOperation(resp.Body)
		if err != nil {
			return nil, &Error{Phase: phase, Status: resp.Status, Err: err}
		}
		if op.OperationID == "" {
			return nil, &Error{Phase: phase, Status: resp.Status, Message: "answer without operationId", Err: ErrProtocol}
		}
		final := resp.Status == 200 && op.Status != StatusAssigning && op.Status != ""
		if final {
			return p.result(op, st), nil
		}
		if resp.Status != 200 && resp.Status != 202 {
			return nil, &Error{Phase: phase, Status: resp.Status, Message: "unexpected answer", Err: ErrProtocol}
		}
		wait := p.cfg.PollInterval
		if resp.HasRetryAfter {
			wait = resp.RetryAfter // 0 means ask again now
		}
		p.cfg.Logger.Debug("operation pending", "operationId", op.OperationID, "status", op.Status, "wait", wait)
		if err := p.cfg.Sleep(ctx, wait); err != nil {
			return nil, &Error{Phase: PhasePoll, Message: "waiting to poll", Err: err}
		}
		if phase != PhasePoll {
			phase = PhasePoll
			p.phase(PhasePoll)
		}
		opID := op.OperationID
		resp, err = p.send(ctx, s, PhasePoll, func(rid string) string { return pollTopic(rid, opID) }, nil)
		if err != nil {
			return nil, err
		}
		if resp.Status >= 300 {
			return nil, answerError(PhasePoll, resp, p.sess.RegistrationID)
		}
	}
}

// result builds the Result of a final operation.
func (p *provisioner) result(op operationBody, st RegistrationState) *Result {
	status := st.Status
	if status == "" {
		status = op.Status
	}
	regID := st.RegistrationID
	if regID == "" {
		regID = p.sess.RegistrationID
	}
	return &Result{
		RegistrationID:    regID,
		OperationID:       op.OperationID,
		Status:            status,
		AssignedHub:       st.AssignedHub,
		DeviceID:          st.DeviceID,
		Substatus:         st.Substatus,
		Payload:           st.Payload,
		RegistrationState: op.RegistrationState,
		State:             st,
	}
}

// answerError turns a non-2xx answer to registration regID into an *Error.
func answerError(phase Phase, resp response, regID string) *Error {
	eb := parseError(resp.Body)
	return &Error{Phase: phase, Status: resp.Status, ErrorCode: int(eb.ErrorCode),
		TrackingID: eb.TrackingID, Message: trunc(eb.Message), RegistrationID: regID}
}
