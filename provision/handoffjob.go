package provision

// One job of the outbox (handoff.go): what a register writes (enqueue)
// and what a worker does with it (work).

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/hubconn"
	"github.com/tpmdps/dpsd/store"
)

// jobVersion is the version of handoffJob's JSON.
const jobVersion = 1

// handoffJob is the Data of a job: everything a worker needs, decided at
// the register, plus the progress of earlier attempts.
type handoffJob struct {
	V          int    `json:"v"`
	TrackingID string `json:"trackingId"`
	Method     string `json:"method"`
	// Registration is the record to write (its status, hub and substatus
	// are set when the job ends); AttestationHash beside it (the record's
	// JSON leaves it out).
	Registration    *store.Registration `json:"registration"`
	AttestationHash []byte              `json:"attestationHash,omitempty"`
	// Hub is the hub decided ("" until a custom allocation has decided);
	// Substatus goes with it.
	Hub       string `json:"hub,omitempty"`
	Substatus string `json:"substatus,omitempty"`
	// PrevHub and PrevDeviceID are the device's assignment before this
	// registration; Never and Migrate its reprovisioning policy.
	PrevHub      string `json:"prevHub,omitempty"`
	PrevDeviceID string `json:"prevDeviceId,omitempty"`
	Never        bool   `json:"never,omitempty"`
	Migrate      bool   `json:"migrate,omitempty"`
	// Custom is the webhook call of a custom allocation.
	Custom *customJob `json:"custom,omitempty"`
	// InitialTwin is the enrollment's or group's initial twin.
	InitialTwin json.RawMessage `json:"initialTwin,omitempty"`
	// Auth is the device's credential at its hub, keys left out (they are
	// in the job's sealed Secret); X509 certificates are named by their
	// thumbprints.
	Auth    hubconn.Auth `json:"auth"`
	IoTEdge bool         `json:"iotEdge,omitempty"`
	// AuthenticationKey is a TPM device's hub key blob (encrypted to its
	// TPM), answered when the job ends.
	AuthenticationKey []byte `json:"authenticationKey,omitempty"`
	// MigratedTwin is the twin read from the hub the device leaves (read
	// once, kept here so that a repeated attempt does not read it again
	// after the device was removed from there).
	MigratedTwin *hubconn.Twin `json:"migratedTwin,omitempty"`
	TwinRead     bool          `json:"twinRead,omitempty"`
	// CSR is the device's certificate signing request (DER), CSRField the
	// register field it came in, CertPolicy the enrollment's or group's
	// certificate settings. IssuedChain is the chain issued for it (DER,
	// leaf first): issued once the hub is decided and kept before the
	// device's hub identity names it, so that every later attempt (after a
	// crash too) registers the same certificate.
	CSR         []byte                   `json:"csr,omitempty"`
	CSRField    string                   `json:"csrField,omitempty"`
	CertPolicy  *store.CertificatePolicy `json:"certPolicy,omitempty"`
	IssuedChain [][]byte                 `json:"issuedChain,omitempty"`
	// LastError is why the last attempt failed (for the final message).
	LastError string `json:"lastError,omitempty"`
}

// jobSecret is the sealed Secret of a job: the device's hub key (TPM) and
// the symmetric keys its hub identity gets.
type jobSecret struct {
	HubKey       []byte `json:"hubKey,omitempty"`
	PrimaryKey   string `json:"primaryKey,omitempty"`
	SecondaryKey string `json:"secondaryKey,omitempty"`
}

// needsOutbox reports whether an allocation needs outside I/O: a webhook,
// or a hub (the new one, or the one left) with a hand-off connector.
func (s *Service) needsOutbox(a *allocation, snap *hubSnapshot) bool {
	return a.custom || snap.hasHandoff(a.hub) || (a.moved() && snap.hasHandoff(a.prevHub))
}

// enqueue writes the operation (assigning) and the job of a registration
// that needs outside I/O, in one durable step, and answers 202.
func (s *Service) enqueue(ctx context.Context, id Identity, src *source, req RegisterRequest, ek, srk *attest.Public,
	rec *store.Registration, a *allocation, opID string, now time.Time, trackingID string) (Response, error) {
	rec.DeviceID = src.deviceID
	d := &handoffJob{V: jobVersion, TrackingID: trackingID, Method: id.Method.String(), Registration: rec,
		AttestationHash: rec.AttestationHash, PrevHub: a.prevHub, PrevDeviceID: a.prevDeviceID, Never: a.never, Migrate: a.migrate,
		InitialTwin: src.settings().InitialTwin}
	if c := src.settings().Capabilities; c != nil {
		d.IoTEdge = c.IoTEdge
	}
	if csr := req.csr; csr != nil {
		// Refused as the synchronous path refuses it, before any I/O.
		switch {
		case s.cfg.Issuer == nil:
			return s.csrNotConfigured(ctx, id, csr, "the service issues no certificates (no issuer)", now, trackingID)
		case src.issuance.credentialPolicy == "":
			return s.csrNotConfigured(ctx, id, csr, "the enrollment or group names no credentialPolicyName", now, trackingID)
		}
		d.CSR, d.CSRField, d.CertPolicy = csr.req.Raw, csr.field, src.issuance.cert
	}
	if a.custom {
		cj, err := newCustomJob(id, src, req, ek, srk, a)
		if err != nil {
			return s.failNow(ctx, id, src, rec, opID, now, trackingID, ErrorCodeCustomAllocationFailed, err.Error())
		}
		d.Custom = cj
	} else {
		d.Hub, d.Substatus = a.hub, a.substatus
	}
	var sec jobSecret
	if srk != nil {
		if len(rec.HubKey) != HubKeySize {
			rec.HubKey = make([]byte, HubKeySize)
			if _, err := s.cfg.Rand.Read(rec.HubKey); err != nil {
				return Response{}, fmt.Errorf("hub key randomness: %w", err)
			}
		}
		blob, err := attest.NewActivationBlob(s.cfg.Rand, ek, srk, rec.HubKey)
		if err != nil {
			return Response{}, badRequest(fmt.Sprintf("cannot build an activation blob for these keys: %v", err))
		}
		d.AuthenticationKey = blob
	}
	auth, err := s.hubCredential(id, src, rec.HubKey, &sec)
	if err != nil {
		return Response{}, err
	}
	d.Auth = auth
	sec.HubKey = rec.HubKey
	data, err := json.Marshal(d)
	if err != nil {
		return Response{}, fmt.Errorf("encode the job: %w", err)
	}
	secret, err := json.Marshal(&sec)
	if err != nil {
		return Response{}, fmt.Errorf("encode the job: %w", err)
	}
	op := &store.Operation{ID: opID, RegistrationID: id.RegistrationID, Status: store.RegistrationAssigning,
		CreatedAt: now, ExpiresAt: now.Add(s.cfg.OperationLifetime)}
	job := &store.Job{ID: opID, RegistrationID: id.RegistrationID, Data: data, Secret: secret, NotBefore: now, CreatedAt: now}
	if err := s.cfg.Store.EnqueueJob(ctx, op, job, s.cfg.Handoff.MaxPending); err != nil {
		if errors.Is(err, store.ErrLimit) {
			return Response{}, throttled("Too many registrations are waiting for their hub; retry later", err.Error())
		}
		return Response{}, fmt.Errorf("enqueue the registration: %w", err)
	}
	s.handoff.notify()
	s.log.LogAttrs(ctx, slog.LevelInfo, "registration queued for its hub",
		slog.String("trackingId", trackingID), slog.String("registrationId", id.RegistrationID),
		slog.String("method", id.Method.String()), slog.String("groupId", src.groupID),
		slog.String("hub", d.Hub), slog.Bool("custom", a.custom), slog.String("previousHub", a.prevHub))
	return Response{Status: 202, RetryAfter: s.cfg.Handoff.RetryAfter, Body: &OperationStatus{
		OperationID: opID,
		Status:      store.RegistrationAssigning,
	}}, nil
}

// hubCredential is the credential a device's hub identity gets, keys
// into sec: a TPM device's hub key; a symmetric-key device's enrollment
// keys, or the keys derived from its group's; an X.509 device's
// certificate thumbprints (the hub's X509Identity may turn that into
// certificateAuthority when the job runs).
func (s *Service) hubCredential(id Identity, src *source, hubKey []byte, sec *jobSecret) (hubconn.Auth, error) {
	switch id.Method {
	case AuthTPM:
		sec.PrimaryKey, sec.SecondaryKey = base64.StdEncoding.EncodeToString(hubKey), secondaryHubKey(hubKey)
		return hubconn.Auth{Type: hubconn.AuthSAS}, nil
	case AuthSymmetricKey:
		att := src.settings().Attestation.SymmetricKey
		if att == nil {
			return hubconn.Auth{}, unauthorized("symmetric-key registration without keys")
		}
		if src.enrollment != nil {
			sec.PrimaryKey, sec.SecondaryKey = att.PrimaryKey, att.SecondaryKey
			return hubconn.Auth{Type: hubconn.AuthSAS}, nil
		}
		spelled := id.spelledID
		if spelled == "" {
			spelled = id.RegistrationID
		}
		for _, k := range []struct {
			group string
			out   *string
		}{{att.PrimaryKey, &sec.PrimaryKey}, {att.SecondaryKey, &sec.SecondaryKey}} {
			if k.group == "" {
				continue
			}
			dk, err := attest.DeriveDeviceKeyBase64(k.group, spelled)
			if err != nil {
				return hubconn.Auth{}, fmt.Errorf("derive the device key: %w", err)
			}
			*k.out = dk
		}
		return hubconn.Auth{Type: hubconn.AuthSAS}, nil
	case AuthX509:
		if id.Certificate == nil {
			return hubconn.Auth{}, unauthorized("x509 identity without a certificate")
		}
		_, primary := store.CertificateThumbprints(id.Certificate)
		auth := hubconn.Auth{Type: hubconn.AuthSelfSigned, PrimaryThumbprint: primary}
		// An individual enrollment may pin a second certificate: the hub
		// accepts either.
		if x := src.settings().Attestation.X509; src.enrollment != nil && x != nil && x.ClientCertificates != nil {
			for _, c := range []*store.X509CertificateWithInfo{x.ClientCertificates.Primary, x.ClientCertificates.Secondary} {
				if c != nil && c.Info != nil && c.Info.SHA256Thumbprint != "" && !strings.EqualFold(c.Info.SHA256Thumbprint, primary) {
					auth.SecondaryThumbprint = strings.ToUpper(c.Info.SHA256Thumbprint)
					break
				}
			}
		}
		return auth, nil
	}
	return hubconn.Auth{}, unauthorized("unsupported attestation method " + id.Method.String())
}

// failNow records a registration that fails before any I/O (the
// synchronous path's failure) and answers 202.
func (s *Service) failNow(ctx context.Context, id Identity, src *source, rec *store.Registration, opID string, now time.Time,
	trackingID string, code int, msg string) (Response, error) {
	rec.Status, rec.ErrorCode, rec.ErrorMessage = store.RegistrationFailed, code, msg
	rec.DeviceID = ""
	op := &store.Operation{ID: opID, RegistrationID: id.RegistrationID, Status: rec.Status, ErrorCode: code, ErrorMessage: msg,
		CreatedAt: now, ExpiresAt: now.Add(s.cfg.OperationLifetime)}
	if _, err := s.cfg.Store.RecordRegistration(ctx, rec, op); err != nil {
		return Response{}, fmt.Errorf("record registration: %w", err)
	}
	s.recorded(ctx, RegistrationEvent{RegistrationID: id.RegistrationID, AttestationType: src.attestationType, Method: id.Method.String(),
		GroupID: src.groupID, Status: rec.Status, ErrorCode: code, TrackingID: trackingID})
	return Response{Status: 202, RetryAfter: s.retryAfter, Body: &OperationStatus{OperationID: opID, Status: store.RegistrationAssigning}}, nil
}

// outcome is what one attempt at a job came to.
type outcome struct {
	// retry: try again after delay (at least); err says why.
	retry bool
	delay time.Duration
	err   error
	// fail: the registration fails with code and message.
	fail bool
	code int
	msg  string
	// release: the job made progress worth keeping; continue it at once
	// from the store (no failure).
	release bool
}

// work does one attempt at a claimed job and records what came of it.
func (s *Service) work(ctx context.Context, j *store.Job) {
	log := s.log.With(slog.String("registrationId", j.RegistrationID), slog.String("operationId", j.ID))
	var d handoffJob
	var sec jobSecret
	if err := json.Unmarshal(j.Data, &d); err != nil || d.Registration == nil {
		log.LogAttrs(ctx, slog.LevelError, "outbox: a job that cannot be read is failed", slog.Any("error", err))
		d = handoffJob{Registration: &store.Registration{RegistrationID: j.RegistrationID}}
		s.finish(ctx, j, &d, &sec, outcome{fail: true, code: ErrorCodeInternal, msg: "the registration's job could not be read"})
		return
	}
	if len(j.Secret) > 0 {
		if err := json.Unmarshal(j.Secret, &sec); err != nil {
			s.finish(ctx, j, &d, &sec, outcome{fail: true, code: ErrorCodeInternal, msg: "the registration's job could not be read"})
			return
		}
	}
	log = log.With(slog.String("trackingId", d.TrackingID))
	actx, cancel := context.WithTimeout(ctx, s.cfg.Handoff.Lease/2)
	o := s.attempt(actx, j, &d, &sec, log)
	cancel()
	if ctx.Err() != nil && !o.fail && !o.release && (o.retry || o.err != nil) {
		// Stopping: hand the job back as it was, due at once.
		s.release(j, &d, 0, log)
		return
	}
	s.finish(ctx, j, &d, &sec, o)
}

// attempt does what is left of the job. See handoff.go for the order and
// the guarantees.
func (s *Service) attempt(ctx context.Context, j *store.Job, d *handoffJob, sec *jobSecret, log *slog.Logger) outcome {
	deadline := j.CreatedAt.Add(s.cfg.Handoff.Timeout)
	late := !s.cfg.Now().Before(deadline)
	snap, err := s.linkedHubs(ctx)
	if err != nil {
		return outcome{retry: true, err: err}
	}
	if c := d.Custom; c != nil && !c.Decided {
		if o, ok := s.decideCustom(ctx, d, snap, late, log); !ok {
			return o
		}
	}
	conn, cerr := snap.connector(d.Hub)
	if cerr != nil {
		return outcome{fail: true, code: ErrorCodeHubRefused, msg: fmt.Sprintf("hub %s cannot be registered with: %v", d.Hub, cerr)}
	}
	if len(d.CSR) > 0 && len(d.IssuedChain) == 0 {
		// The hub is decided: issue the certificate, and keep it before
		// any hub hears of it. A service restarted without an issuer
		// since the register fails it as the register would have.
		if s.cfg.Issuer == nil {
			return outcome{fail: true, code: ErrorCodeCSRNotConfigured, msg: MsgCSRNotConfigured}
		}
		chain, err := s.issueForJob(ctx, d)
		if err != nil {
			if late {
				return outcome{fail: true, code: ErrorCodeInternal, msg: "The operational certificate could not be issued"}
			}
			return outcome{retry: true, err: err}
		}
		d.IssuedChain = chain
		return outcome{release: true}
	}
	moved := d.PrevHub != "" && !strings.EqualFold(d.Hub, d.PrevHub)
	var old hubconn.Connector
	if moved {
		var oerr error
		if old, oerr = snap.connector(d.PrevHub); oerr != nil {
			log.LogAttrs(ctx, slog.LevelWarn, "outbox: the hub the device leaves has no usable connector: its identity there stays",
				slog.String("hub", d.PrevHub), slog.String("error", oerr.Error()))
			old = nil
		}
	}
	// The twin the new hub starts with.
	var twin *hubconn.Twin
	switch {
	case moved && d.Migrate && old != nil && conn != nil:
		if !d.TwinRead {
			t, err := old.Twin(ctx, d.PrevDeviceID)
			switch {
			case errors.Is(err, hubconn.ErrNotFound), errors.Is(err, hubconn.ErrUnsupported):
				t = nil
			case err != nil:
				return s.hubFailure(err, late, d.PrevHub, "read the device's twin to migrate it from")
			}
			d.MigratedTwin, d.TwinRead = t, true
			return outcome{release: true} // keep what was read before anything changes
		}
		twin = d.MigratedTwin
		if twin == nil {
			twin = s.initialTwin(d)
		}
	case d.PrevHub == "" || (moved && !d.Migrate) || (moved && old == nil):
		twin = s.initialTwin(d)
	}
	if conn != nil {
		dev := &hubconn.Device{DeviceID: d.Registration.DeviceID, RegistrationID: d.Registration.RegistrationID,
			AttestationType: d.Registration.AttestationType, EnrollmentGroupID: d.Registration.EnrollmentGroupID,
			Auth: d.Auth, IoTEdge: d.IoTEdge}
		dev.Auth.PrimaryKey, dev.Auth.SecondaryKey = sec.PrimaryKey, sec.SecondaryKey
		caIdentity := false
		if h := snap.hub(d.Hub); h != nil && h.rec.X509Identity == store.X509CertificateAuthority {
			caIdentity = true
		}
		if len(d.IssuedChain) > 0 {
			auth, err := issuedAuth(d, caIdentity, s.cfg.Now())
			if err != nil {
				return outcome{fail: true, code: ErrorCodeInternal, msg: "The issued certificate could not be read"}
			}
			dev.Auth = auth
		} else if dev.Auth.Type == hubconn.AuthSelfSigned && caIdentity {
			dev.Auth = hubconn.Auth{Type: hubconn.AuthCertificateAuthority}
		}
		start := time.Now()
		if err := conn.Register(ctx, dev, twin); err != nil {
			o := s.hubFailure(err, late, d.Hub, "register the device in")
			s.observeHandoff(ctx, HandoffStepHub, o, time.Since(start))
			return o
		}
		s.observeHandoff(ctx, HandoffStepHub, outcome{}, time.Since(start))
	}
	if moved && old != nil {
		if err := old.Remove(ctx, d.PrevDeviceID); err != nil {
			var he *hubconn.Error
			if errors.As(err, &he) && he.Retryable && !late {
				return outcome{retry: true, delay: he.RetryAfter, err: err}
			}
			// The device has its identity in its new hub: the one it left
			// stays behind rather than failing the device for it.
			log.LogAttrs(ctx, slog.LevelWarn, "outbox: the device's identity in the hub it left could not be deleted",
				slog.String("hub", d.PrevHub), slog.String("error", err.Error()))
		}
	}
	return outcome{}
}

// decideCustom calls the webhook (or applies the fallback) and settles
// the allocation in d. It returns ok false with the outcome when the job
// cannot go on now.
func (s *Service) decideCustom(ctx context.Context, d *handoffJob, snap *hubSnapshot, late bool, log *slog.Logger) (outcome, bool) {
	c := d.Custom
	if s.cfg.Custom == nil {
		return outcome{fail: true, code: ErrorCodeCustomAllocationFailed, msg: "Custom allocation is not configured on this provisioning service"}, false
	}
	start := time.Now()
	resp, err := s.cfg.Custom.Allocate(ctx, c.definition(), c.Request)
	took := time.Since(start)
	var hub string
	if err != nil {
		var ae *allocator.Error
		if !errors.As(err, &ae) {
			ae = &allocator.Error{Retryable: true, Message: err.Error()}
		}
		s.observeHandoff(ctx, HandoffStepWebhook, outcome{retry: ae.Retryable, fail: !ae.Retryable}, took)
		if !ae.Retryable {
			return outcome{fail: true, code: ae.ErrorCode, msg: ae.Message}, false
		}
		if !late {
			return outcome{retry: true, delay: ae.RetryAfter, err: ae}, false
		}
		if c.Fallback != store.FallbackHashed {
			return outcome{fail: true, code: ErrorCodeCustomAllocationFailed,
				msg: "Custom allocation failed: " + ae.Message + " (gave up after " + s.cfg.Handoff.Timeout.String() + ")"}, false
		}
		if hub = c.fallbackHub(snap); hub == "" {
			return outcome{fail: true, code: ErrorCodeCustomAllocationFailed,
				msg: "Custom allocation failed: " + ae.Message + "; the fallback found no hub to hash across"}, false
		}
		log.LogAttrs(ctx, slog.LevelWarn, "outbox: custom allocation webhook failed: fallback policy hashed",
			slog.String("error", ae.Message), slog.String("hub", hub))
	} else {
		var msg string
		if hub, msg = c.checkAnswer(resp); msg != "" {
			return outcome{fail: true, code: ErrorCodeCustomAllocationFailed, msg: msg}, false
		}
		c.Twin, c.Payload = resp.InitialTwin, resp.Payload
		s.observeHandoff(ctx, HandoffStepWebhook, outcome{}, took)
		log.LogAttrs(ctx, slog.LevelDebug, "outbox: custom allocation answered", slog.String("hub", hub), slog.Duration("took", took))
	}
	a := allocation{prevHub: d.PrevHub, prevDeviceID: d.PrevDeviceID, never: d.Never, migrate: d.Migrate}.settle(hub)
	d.Hub, d.Substatus, c.Decided = a.hub, a.substatus, true
	return outcome{}, true
}

// initialTwin is the twin a device starts with: the webhook's, else the
// enrollment's; nil when neither has one (an empty twin).
func (s *Service) initialTwin(d *handoffJob) *hubconn.Twin {
	raw := d.InitialTwin
	if d.Custom != nil && len(d.Custom.Twin) > 0 {
		raw = d.Custom.Twin
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return &hubconn.Twin{}
	}
	var t struct {
		Tags       json.RawMessage `json:"tags"`
		Properties struct {
			Desired json.RawMessage `json:"desired"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(raw, &t); err != nil {
		return &hubconn.Twin{}
	}
	return &hubconn.Twin{Tags: t.Tags, Desired: t.Properties.Desired}
}

// hubFailure turns a connector's error into an outcome: retried while the
// hub may recover (and the deadline allows), else the registration fails.
func (s *Service) hubFailure(err error, late bool, hub, what string) outcome {
	var he *hubconn.Error
	retryable := errors.As(err, &he) && he.Retryable || !errors.As(err, &he) && !errors.Is(err, hubconn.ErrNotFound)
	if retryable && !late {
		var hint time.Duration
		if he != nil {
			hint = he.RetryAfter
		}
		return outcome{retry: true, delay: hint, err: err}
	}
	if retryable {
		return outcome{fail: true, code: ErrorCodeHubUnavailable,
			msg: fmt.Sprintf("IoT hub %s could not be reached to %s it within %s: %v", hub, strings.TrimSuffix(what, " in"), s.cfg.Handoff.Timeout, err)}
	}
	return outcome{fail: true, code: ErrorCodeHubRefused, msg: fmt.Sprintf("IoT hub %s refused to %s it: %v", hub, what, err)}
}

// finish records an attempt's outcome: the registration and the final
// operation (done or failed) with the end of the job, or the job's
// release for another attempt.
func (s *Service) finish(ctx context.Context, j *store.Job, d *handoffJob, sec *jobSecret, o outcome) {
	log := s.log.With(slog.String("trackingId", d.TrackingID), slog.String("registrationId", j.RegistrationID), slog.String("operationId", j.ID))
	now := s.cfg.Now()
	switch {
	case o.release:
		s.release(j, d, 0, log)
		return
	case o.retry:
		d.LastError = o.err.Error()
		delay := s.backoff(j.Attempts+1, o.delay)
		if until := j.CreatedAt.Add(s.cfg.Handoff.Timeout); now.Add(delay).After(until) {
			// One last attempt at the deadline: it fails (or falls back)
			// if the hub or webhook has not recovered by then.
			delay = max(until.Sub(now), 0)
		}
		log.LogAttrs(ctx, slog.LevelInfo, "outbox: attempt failed, retrying", slog.Int("attempts", j.Attempts+1),
			slog.Duration("in", delay), slog.String("error", d.LastError))
		s.release(j, d, delay, log)
		return
	}
	rec := d.Registration
	rec.AttestationHash, rec.HubKey = d.AttestationHash, sec.HubKey
	op := &store.Operation{ID: j.ID, RegistrationID: j.RegistrationID, CreatedAt: j.CreatedAt, ExpiresAt: j.CreatedAt.Add(s.cfg.OperationLifetime)}
	if o.fail {
		rec.Status, rec.ErrorCode, rec.ErrorMessage = store.RegistrationFailed, o.code, o.msg
		rec.AssignedHub, rec.Substatus, rec.DeviceID = "", "", ""
		if d.Custom != nil && len(d.Custom.Payload) > 0 {
			rec.Payload = d.Custom.Payload
		}
	} else {
		rec.Status, rec.AssignedHub, rec.Substatus, rec.ErrorCode, rec.ErrorMessage = store.RegistrationAssigned, d.Hub, d.Substatus, 0, ""
		if d.Custom != nil && len(d.Custom.Payload) > 0 {
			rec.Payload = d.Custom.Payload
		}
		op.AuthenticationKey = d.AuthenticationKey
		if len(d.IssuedChain) > 0 {
			leaf, err := x509.ParseCertificate(d.IssuedChain[0])
			if err != nil {
				log.LogAttrs(ctx, slog.LevelError, "outbox: the issued certificate cannot be read", slog.String("error", err.Error()))
				return
			}
			rec.SupersededCertificates = supersede(rec.Certificate, rec.SupersededCertificates, now)
			rec.Certificate = store.NewX509CertificateInfo(leaf)
			op.IssuedCertificateChain, op.CSRField = d.IssuedChain, d.CSRField
		}
	}
	op.Status, op.ErrorCode, op.ErrorMessage = rec.Status, rec.ErrorCode, rec.ErrorMessage
	if _, err := s.cfg.Store.FinishJob(context.WithoutCancel(ctx), j.ID, s.handoff.owner, rec, op); err != nil {
		if leaseLost(err) {
			log.LogAttrs(ctx, slog.LevelWarn, "outbox: the job was taken over by another worker; its outcome is theirs", slog.String("error", err.Error()))
			return
		}
		log.LogAttrs(ctx, slog.LevelError, "outbox: recording the registration failed; the job will be done again", slog.String("error", err.Error()))
		return
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "registration recorded",
		slog.String("trackingId", d.TrackingID), slog.String("registrationId", j.RegistrationID),
		slog.String("method", d.Method), slog.String("groupId", rec.EnrollmentGroupID),
		slog.String("status", rec.Status), slog.String("assignedHub", rec.AssignedHub),
		slog.String("substatus", rec.Substatus), slog.Int("errorCode", rec.ErrorCode), slog.Int("attempts", j.Attempts+1))
	ev := RegistrationEvent{
		RegistrationID: j.RegistrationID, AttestationType: rec.AttestationType, Method: d.Method,
		GroupID: rec.EnrollmentGroupID, Status: rec.Status, AssignedHub: rec.AssignedHub, DeviceID: rec.DeviceID,
		ErrorCode: rec.ErrorCode, TrackingID: d.TrackingID,
	}
	if op.IssuedCertificateChain != nil {
		ev.CertificateSerial, ev.CertificateThumbprint = rec.Certificate.SerialNumber, rec.Certificate.SHA256Thumbprint
	}
	s.recorded(ctx, ev)
}

// release hands the job back to the outbox with d's progress, due after
// delay.
func (s *Service) release(j *store.Job, d *handoffJob, delay time.Duration, log *slog.Logger) {
	data, err := json.Marshal(d)
	if err != nil {
		log.LogAttrs(context.Background(), slog.LevelError, "outbox: encoding the job's progress failed", slog.String("error", err.Error()))
		return
	}
	r := *j
	r.Data, r.Attempts, r.NotBefore = data, j.Attempts+1, s.cfg.Now().Add(delay).UTC()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.cfg.Store.ReleaseJob(ctx, &r); err != nil {
		if leaseLost(err) {
			log.LogAttrs(ctx, slog.LevelWarn, "outbox: the job was taken over by another worker", slog.String("error", err.Error()))
			return
		}
		log.LogAttrs(ctx, slog.LevelError, "outbox: releasing the job failed; it is due again when its lease expires", slog.String("error", err.Error()))
		return
	}
	if delay == 0 {
		s.handoff.notify()
	}
}

// issueForJob issues the operational certificate a job's CSR asks for,
// as the synchronous path does (issueCertificate), and returns the chain
// as DER, leaf first.
func (s *Service) issueForJob(ctx context.Context, d *handoffJob) ([][]byte, error) {
	req, err := x509.ParseCertificateRequest(d.CSR)
	if err != nil {
		return nil, fmt.Errorf("the job's certificate signing request: %w", err)
	}
	certs, err := s.issueCertificate(ctx, Identity{RegistrationID: d.Registration.RegistrationID},
		&deviceCSR{field: d.CSRField, req: req}, issuancePolicy{credentialPolicy: "job", cert: d.CertPolicy}, s.cfg.Now().UTC())
	if err != nil {
		return nil, err
	}
	chain := make([][]byte, len(certs))
	for i, c := range certs {
		chain[i] = c.Raw
	}
	return chain, nil
}

// issuedAuth is the hub identity of a device that received an operational
// certificate: it authenticates to its hub with that certificate, so its
// identity is X.509, not the keys it provisioned with.
//
// By default (selfSigned) the identity names the certificate by its
// SHA-256 thumbprint, and the certificate it replaces as the secondary
// while that one is still valid, so a device mid-rotation connects with
// either. IoT Hub accepts a thumbprint identity for any certificate, so
// this works with a stock hub and binds the identity to exactly the
// certificates dpsd issued to this device. With a linked hub whose
// X509Identity is certificateAuthority (the operator uploaded and verified
// dpsd's issuing CA in the hub, as the cloud's certificate management
// makes the hub trust its issuing CA) the identity is certificateAuthority:
// the hub checks the chain and that the certificate's common name is the
// device id. A common name that is not exactly the device id (IoT Hub
// compares device ids case-sensitively; an enrollment may set another
// deviceId) could never authenticate that way, so such a device keeps the
// thumbprint identity.
func issuedAuth(d *handoffJob, caIdentity bool, now time.Time) (hubconn.Auth, error) {
	leaf, err := x509.ParseCertificate(d.IssuedChain[0])
	if err != nil {
		return hubconn.Auth{}, err
	}
	if caIdentity && leaf.Subject.CommonName == d.Registration.DeviceID {
		return hubconn.Auth{Type: hubconn.AuthCertificateAuthority}, nil
	}
	_, primary := store.CertificateThumbprints(leaf)
	auth := hubconn.Auth{Type: hubconn.AuthSelfSigned, PrimaryThumbprint: primary}
	if prev := d.Registration.Certificate; prev != nil && prev.SHA256Thumbprint != "" &&
		!strings.EqualFold(prev.SHA256Thumbprint, primary) && now.Before(prev.NotAfter) {
		auth.SecondaryThumbprint = strings.ToUpper(prev.SHA256Thumbprint)
	}
	return auth, nil
}
