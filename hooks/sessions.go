package hooks

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tpmdps/dpsd/internal/ratelimit"
	"github.com/tpmdps/dpsd/provision"
)

// The session table: every connection the hook has admitted, the
// authenticated ones by registration id (for takeover), the live restricted
// sessions (for their caps) and the requests being answered (for drain).
// One mutex guards it; the methods below are the only code that takes it.
//
// A connection goes through admit (in OnConnectAuthenticate, before the
// CONNACK), establish (OnSessionEstablished, after it), and release (on
// takeover, when it never gets established, and in OnDisconnect), which
// gives back whatever it held. The broker keeps no session state: every
// CONNECT starts a new session, so the CONNACK's Session Present flag is
// always 0 ([MQTT-3.2.2-1], [MQTT-3.2.2-3] in 3.1.1; [MQTT-3.2.2-2],
// [MQTT-3.2.2-3] in MQTT 5), and a 3.1.1 session with CleanSession 0 is
// not kept after its connection closes either (a deliberate departure from
// [MQTT-3.1.2-4]: a device's requests and answers live only as long as the
// connection).

// sessionTable is the hook's state shared by all connections.
type sessionTable struct {
	mu               sync.Mutex
	byClient         map[*mqtt.Client]*session
	byID             map[string]*session // authenticated sessions by registration id
	restricted       int                 // live restricted sessions
	restrictedByAddr *ratelimit.Counter  // live restricted sessions per address key
	pending          int                 // requests being answered
	draining         bool
	drained          chan struct{} // closed when draining and pending reaches 0
}

// newSessionTable returns an empty table whose restricted sessions per
// address are capped at perAddress (< 0: no cap).
func newSessionTable(perAddress int) sessionTable {
	return sessionTable{
		byClient:         make(map[*mqtt.Client]*session),
		byID:             make(map[string]*session),
		restrictedByAddr: ratelimit.NewCounter(perAddress),
		drained:          make(chan struct{}),
	}
}

// session is the hook's state for one admitted connection.
type session struct {
	cl         *mqtt.Client
	id         provision.Identity
	trackingID string // of the CONNECT
	addr       string // key of the remote address, for per-address limits (ratelimit.AddressKey)

	// guarded by sessionTable.mu
	established bool
	released    bool
	estTimer    *time.Timer
	idle        *time.Timer // restricted: closes after RestrictedIdleTimeout without a TPM register
	lifetime    *time.Timer // restricted: closes RestrictedLifetime after the CONNACK

	// touched only by the client's read goroutine
	inbound    inbound // the PUBLISH being read, between OnPacketRead and OnPublish
	pendingReq *request
	challenges int
	requests   *ratelimit.Bucket
}

func (s *session) restricted() bool { return s.id.Method == provision.AuthRestricted }

// inbound is the request topic of the PUBLISH being read, parsed once by
// OnPacketRead and taken by OnPublish; topic is the name it was parsed from
// ("" when none is waiting).
type inbound struct {
	topic  string
	parsed RequestTopic
}

// Why admit refuses a session (ErrShuttingDown too).
var (
	errRestrictedCap        = errors.New("hooks: restricted session cap reached")
	errRestrictedAddressCap = errors.New("hooks: restricted session cap of the address reached")
	errWeakerTakeover       = errors.New("hooks: a more strongly authenticated session holds this id")
)

// admit enters the new session s into the table, or says why not:
// ErrShuttingDown while draining, errRestrictedCap or errRestrictedAddressCap
// for a restricted session over a cap, errWeakerTakeover for an
// authenticated session whose id is held by a more strongly authenticated
// one. It returns the session s takes over, if any: a new connection with
// the id of a connected client replaces it ([MQTT-3.1.4-2] in 3.1.1,
// [MQTT-3.1.4-3] in MQTT 5), and the caller closes the old connection
// (without the DISCONNECT 0x8E an MQTT 5 server sends first: see CloseAll).
// Restricted sessions never take over: anyone may open one under any id.
func (h *Hook) admit(s *session) (victim *session, err error) {
	t := &h.table
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.draining:
		return nil, ErrShuttingDown
	case s.restricted():
		if h.limits.RestrictedSessions > 0 && t.restricted >= h.limits.RestrictedSessions {
			return nil, errRestrictedCap
		}
		if !t.restrictedByAddr.Acquire(s.addr) {
			return nil, errRestrictedAddressCap
		}
		t.restricted++
	default:
		if old := t.byID[s.id.RegistrationID]; old != nil {
			if old.id.Method > s.id.Method {
				return nil, errWeakerTakeover
			}
			victim = old
		}
		t.byID[s.id.RegistrationID] = s
	}
	t.byClient[s.cl] = s
	s.estTimer = time.AfterFunc(establishTimeout, func() { h.abandon(s) })
	return victim, nil
}

// establish marks the session of cl established (its CONNACK has been
// sent) and, for a restricted session, starts its idle and lifetime
// timers. It reports false when cl has no session any more (taken over in
// the meantime).
func (h *Hook) establish(cl *mqtt.Client) bool {
	t := &h.table
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.byClient[cl]
	if s == nil || s.released {
		return false
	}
	s.established = true
	s.estTimer.Stop()
	if s.restricted() && h.limits.RestrictedIdleTimeout > 0 {
		s.idle = time.AfterFunc(h.limits.RestrictedIdleTimeout, func() {
			h.log.Info("closing idle restricted session", "trackingId", s.trackingID, "registrationId", s.id.RegistrationID)
			cl.Stop(ErrIdle)
		})
	}
	if s.restricted() && h.limits.RestrictedLifetime > 0 {
		s.lifetime = time.AfterFunc(h.limits.RestrictedLifetime, func() {
			h.log.Info("closing restricted session at the end of its lifetime", "trackingId", s.trackingID, "registrationId", s.id.RegistrationID)
			cl.Stop(ErrLifetime)
		})
	}
	return true
}

// abandon releases a session whose CONNACK was never sent.
func (h *Hook) abandon(s *session) {
	t := &h.table
	t.mu.Lock()
	est := s.established
	t.mu.Unlock()
	if !est {
		h.release(s)
		t.mu.Lock()
		if t.byClient[s.cl] == s {
			delete(t.byClient, s.cl)
		}
		t.mu.Unlock()
		s.cl.Stop(ErrTakenOver)
	}
}

// release forgets a session's reservations. Idempotent.
func (h *Hook) release(s *session) {
	t := &h.table
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.released {
		return
	}
	s.released = true
	if s.restricted() {
		t.restricted--
		t.restrictedByAddr.Release(s.addr)
	} else if t.byID[s.id.RegistrationID] == s {
		delete(t.byID, s.id.RegistrationID)
	}
	if s.estTimer != nil {
		s.estTimer.Stop()
	}
	if s.idle != nil {
		s.idle.Stop()
	}
	if s.lifetime != nil {
		s.lifetime.Stop()
	}
}

// remove takes the session of cl out of the table and releases it; it
// returns the session, nil when cl had none.
func (h *Hook) remove(cl *mqtt.Client) *session {
	t := &h.table
	t.mu.Lock()
	s := t.byClient[cl]
	delete(t.byClient, cl)
	t.mu.Unlock()
	if s != nil {
		h.release(s)
	}
	return s
}

// session returns the state of an established connection, or nil.
func (h *Hook) session(cl *mqtt.Client) *session {
	t := &h.table
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.byClient[cl]
	if s == nil || !s.established || s.released {
		return nil
	}
	return s
}

// trackingID is the trackingId of the CONNECT of cl, "" when unknown.
func (h *Hook) trackingID(cl *mqtt.Client) string {
	t := &h.table
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.byClient[cl]; s != nil {
		return s.trackingID
	}
	return ""
}

// restrictedActive resets a restricted session's idle timer: it has just
// sent a register with tpm, the only request that keeps it going.
func (h *Hook) restrictedActive(s *session) {
	t := &h.table
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.idle != nil && !s.released {
		s.idle.Reset(h.limits.RestrictedIdleTimeout)
	}
}

// begin counts one request being answered; false while draining (the
// request is not answered).
func (h *Hook) begin() bool {
	t := &h.table
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		return false
	}
	t.pending++
	return true
}

// done marks one request finished.
func (h *Hook) done() {
	t := &h.table
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pending--
	if t.pending == 0 && t.draining {
		select {
		case <-t.drained:
		default:
			close(t.drained)
		}
	}
}

// Drain stops taking new requests and waits until every request being
// answered has been, or ctx ends. New CONNECTs are refused from now on.
func (h *Hook) Drain(ctx context.Context) error {
	t := &h.table
	t.mu.Lock()
	if !t.draining {
		t.draining = true
		if t.pending == 0 {
			close(t.drained)
		}
	}
	t.mu.Unlock()
	select {
	case <-t.drained:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("hooks: drain: %w", ctx.Err())
	}
}

// CloseAll closes every connection the hook knows, without DISCONNECT
// packets: in MQTT 3.1.1 a DISCONNECT only ever goes from client to server
// (section 3.14). MQTT 5 clients are closed the same way.
func (h *Hook) CloseAll() {
	t := &h.table
	t.mu.Lock()
	cls := make([]*mqtt.Client, 0, len(t.byClient))
	for cl := range t.byClient {
		cls = append(cls, cl)
	}
	t.mu.Unlock()
	for _, cl := range cls {
		cl.Stop(ErrShuttingDown)
	}
}

// Sessions reports the live sessions and how many of them are restricted.
func (h *Hook) Sessions() (total, restricted int) {
	t := &h.table
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byClient), t.restricted
}
