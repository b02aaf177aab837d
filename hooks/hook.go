// Package hooks is the MQTT face of the provisioning service: one mochi-mqtt
// hook that authenticates CONNECTs with the service, enforces the DPS topic
// rules, intercepts register and poll requests and writes each answer to the
// one connection that asked (docs/protocol.md sections 2, 3 and 5).
//
// Nothing a device publishes is ever fanned out: every request is taken out
// of mochi's hands in OnPublish (packets.ErrRejectPacket: no fan-out and no
// PUBACK from mochi) and answered on the client's read goroutine once mochi
// has finished with the packet (OnPacketProcessed), with the PUBACK and the
// response written together to that one connection.
package hooks

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/internal/ratelimit"
	"github.com/tpmdps/dpsd/internal/refusal"
	"github.com/tpmdps/dpsd/internal/trackid"
	"github.com/tpmdps/dpsd/provision"
)

// Defaults of Limits.
const (
	DefaultRestrictedSessions              = 1000
	DefaultRestrictedSessionsPerAddress    = 32
	DefaultRestrictedLifetime              = 60 * time.Second
	DefaultAuthFailuresPerAddressPerMinute = 60
	DefaultAuthFailureBurstPerAddress      = 20
	DefaultChallengesPerConnection         = 3
	DefaultChallengesPerAddressPerMinute   = 60
	DefaultChallengeBurstPerAddress        = 20
	DefaultChallengesPerMinute             = 6000
	DefaultChallengeBurst                  = 500
	DefaultRestrictedIdleTimeout           = 30 * time.Second
	DefaultRequestsPerConnectionPerMinute  = 120
	DefaultRequestBurstPerConnection       = 10
	DefaultRequestTimeout                  = 30 * time.Second
	// DefaultPollsPerDevice per DefaultPollWindow is the cloud's published
	// limit (docs/protocol.md section 9: 5 polls per 10 s per device).
	DefaultPollsPerDevice = 5
	DefaultPollWindow     = 10 * time.Second
	// DefaultRegistersPerDevice per DefaultRegisterWindow bounds the register
	// requests of one authenticated device: a real device registers once per
	// provisioning (a few times when it retries).
	DefaultRegistersPerDevice = 10
	DefaultRegisterWindow     = time.Minute
	// establishTimeout bounds the gap between an accepted CONNECT and the
	// established session; a session that never gets there is released.
	establishTimeout = 30 * time.Second
)

// Reasons a connection is closed by this hook (logged, never sent).
var (
	// ErrTopicRefused: the client published to a topic that is not a request topic.
	ErrTopicRefused = errors.New("hooks: publish topic refused")
	// ErrTooManyChallenges: a restricted session asked for more challenges than allowed.
	ErrTooManyChallenges = errors.New("hooks: too many challenges on one connection")
	// ErrIdle: a restricted session stayed idle too long.
	ErrIdle = errors.New("hooks: restricted session idle")
	// ErrLifetime: a restricted session reached its lifetime.
	ErrLifetime = errors.New("hooks: restricted session lifetime over")
	// ErrNotTPMRegister: a restricted session sent a request other than a
	// register with tpm (a poll, a register without tpm or with a body that
	// does not parse); it is answered and then closed.
	ErrNotTPMRegister = errors.New("hooks: restricted session sent a request other than a TPM register")
	// ErrTakenOver: another connection with the same registration id took over.
	ErrTakenOver = errors.New("hooks: session taken over")
	// ErrShuttingDown: the broker is shutting down.
	ErrShuttingDown = errors.New("hooks: shutting down")
	// ErrQoS2: QoS 2 publishes are not part of the DPS protocol.
	ErrQoS2 = errors.New("hooks: QoS 2 publish refused")
)

// Limits bound what restricted (TPM challenge) sessions, and the requests of
// authenticated devices, may do. For every count a zero value takes the
// default and a negative value disables the limit.
// Nothing unauthenticated is ever limited per registrationId (an outsider
// could otherwise lock a device out).
type Limits struct {
	// RestrictedSessions caps concurrent restricted sessions in total; beyond
	// it CONNACK says "server unavailable".
	RestrictedSessions int
	// RestrictedSessionsPerAddress caps concurrent restricted sessions per
	// remote address (ratelimit.AddressKey), well below RestrictedSessions
	// so that one address cannot hold every slot; beyond it CONNACK says
	// "server unavailable".
	RestrictedSessionsPerAddress int
	// RestrictedLifetime closes a restricted session this long after its
	// CONNACK, whatever it does: a TPM device needs a second or two.
	RestrictedLifetime time.Duration
	// ChallengesPerConnection is how many register requests a restricted
	// session may make; the next one closes the connection.
	ChallengesPerConnection int
	// ChallengesPerAddressPerMinute and ChallengeBurstPerAddress rate-limit
	// challenge requests per remote IP address (429 with retry-after).
	ChallengesPerAddressPerMinute int
	ChallengeBurstPerAddress      int
	// ChallengesPerMinute and ChallengeBurst rate-limit challenge requests in total.
	ChallengesPerMinute int
	ChallengeBurst      int
	// RestrictedIdleTimeout closes a restricted session that has not made a
	// TPM register request for this long (pings do not count; any other
	// request closes the session at once).
	RestrictedIdleTimeout time.Duration
	// RequestsPerConnectionPerMinute and RequestBurstPerConnection rate-limit
	// the register and poll requests of every connection (docs/protocol.md
	// section 9: polling too fast gets 429 with retry-after).
	RequestsPerConnectionPerMinute int
	RequestBurstPerConnection      int
	// PollsPerDevice per PollWindow rate-limit the poll requests of each
	// authenticated registrationId across all its connections (429 with
	// retry-after). Restricted sessions are never counted per registrationId.
	PollsPerDevice int
	PollWindow     time.Duration
	// RegistersPerDevice per RegisterWindow rate-limit the register requests
	// of each authenticated registrationId the same way.
	RegistersPerDevice int
	RegisterWindow     time.Duration
	// RequestTimeout bounds one service call.
	RequestTimeout time.Duration
	// AuthFailuresPerAddressPerMinute and AuthFailureBurstPerAddress budget
	// the CONNECTs the service refuses per remote address: once an address
	// has spent its burst, its next CONNECTs are refused (CONNACK "server
	// unavailable") before the service is asked, so before any key work,
	// until the budget refills.
	AuthFailuresPerAddressPerMinute int
	AuthFailureBurstPerAddress      int
	// IPv6PrefixLen is the IPv6 prefix that counts as one address for every
	// per-address limit (ratelimit.AddressKey); IPv4 addresses count one by
	// one. Zero takes ratelimit.DefaultIPv6PrefixLen (64).
	IPv6PrefixLen int
}

// withDefaults fills zero values.
func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.RestrictedSessions, DefaultRestrictedSessions)
	def(&l.RestrictedSessionsPerAddress, DefaultRestrictedSessionsPerAddress)
	def(&l.AuthFailuresPerAddressPerMinute, DefaultAuthFailuresPerAddressPerMinute)
	def(&l.AuthFailureBurstPerAddress, DefaultAuthFailureBurstPerAddress)
	def(&l.ChallengesPerConnection, DefaultChallengesPerConnection)
	def(&l.ChallengesPerAddressPerMinute, DefaultChallengesPerAddressPerMinute)
	def(&l.ChallengeBurstPerAddress, DefaultChallengeBurstPerAddress)
	def(&l.ChallengesPerMinute, DefaultChallengesPerMinute)
	def(&l.ChallengeBurst, DefaultChallengeBurst)
	def(&l.RequestsPerConnectionPerMinute, DefaultRequestsPerConnectionPerMinute)
	def(&l.RequestBurstPerConnection, DefaultRequestBurstPerConnection)
	def(&l.PollsPerDevice, DefaultPollsPerDevice)
	def(&l.RegistersPerDevice, DefaultRegistersPerDevice)
	if l.PollWindow <= 0 {
		l.PollWindow = DefaultPollWindow
	}
	if l.RegisterWindow <= 0 {
		l.RegisterWindow = DefaultRegisterWindow
	}
	if l.RestrictedIdleTimeout == 0 {
		l.RestrictedIdleTimeout = DefaultRestrictedIdleTimeout
	}
	if l.RestrictedLifetime == 0 {
		l.RestrictedLifetime = DefaultRestrictedLifetime
	}
	if l.RequestTimeout <= 0 {
		l.RequestTimeout = DefaultRequestTimeout
	}
	if l.IPv6PrefixLen < 1 || l.IPv6PrefixLen > 128 {
		l.IPv6PrefixLen = ratelimit.DefaultIPv6PrefixLen
	}
	return l
}

// Config configures a Hook.
type Config struct {
	// Service answers authentication, register and poll requests. Required.
	Service *provision.Service
	// Server is the mochi server the hook is added to. Required: the hook
	// removes stale sessions from its client list so that mochi never resumes
	// a session (SessionPresent is always 0) nor sends a 3.1.1 client a
	// DISCONNECT packet on takeover.
	Server *mqtt.Server
	// Limits bound restricted sessions.
	Limits Limits
	// Logger receives one line per connection and per request, each with a
	// trackingId (default: discard). Tokens, keys and blobs are never logged.
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Metrics, if set, receives request latencies and the hook's own
	// CONNECT refusals; nil means off.
	Metrics Metrics
	// Refusals, if set, counts and logs the CONNECTs refused by a
	// per-address limit (the broker shares its listeners' Reporter).
	Refusals *refusal.Reporter
}

// Hook is the DPS mochi hook. Create it with New and add it with
// Server.AddHook before Serve. Safe for concurrent use.
type Hook struct {
	mqtt.HookBase

	svc    *provision.Service
	srv    *mqtt.Server
	limits Limits
	log    *slog.Logger
	now    func() time.Time

	metrics  Metrics           // nil: off
	refusals *refusal.Reporter // nil: off

	addrChallenges  *ratelimit.Limiter
	addrFailures    *ratelimit.Limiter // refused CONNECTs per address: Ready before, Charge after
	totalChallenges *ratelimit.Limiter
	devicePolls     *ratelimit.Limiter // keyed by authenticated registrationId
	deviceRegisters *ratelimit.Limiter // keyed by authenticated registrationId

	ctx    context.Context // cancelled by Stop: service calls give up
	cancel context.CancelFunc

	mu               sync.Mutex
	sessions         map[*mqtt.Client]*session
	byID             map[string]*session // authenticated sessions by registration id
	restricted       int                 // live restricted sessions
	restrictedByAddr *ratelimit.Counter  // live restricted sessions per address key
	pending          int                 // requests being answered
	draining         bool
	drained          chan struct{} // closed when draining and pending reaches 0
}

// New returns a Hook for cfg.
func New(cfg Config) (*Hook, error) {
	if cfg.Service == nil || cfg.Server == nil {
		return nil, errors.New("hooks: Config.Service and Config.Server are required")
	}
	lim := cfg.Limits.withDefaults()
	h := &Hook{
		svc:      cfg.Service,
		srv:      cfg.Server,
		limits:   lim,
		log:      cfg.Logger,
		now:      cfg.Now,
		metrics:  cfg.Metrics,
		refusals: cfg.Refusals,
		sessions: make(map[*mqtt.Client]*session),
		byID:     make(map[string]*session),
		drained:  make(chan struct{}),

		restrictedByAddr: ratelimit.NewCounter(lim.RestrictedSessionsPerAddress),
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.now == nil {
		h.now = time.Now
	}
	if lim.ChallengesPerAddressPerMinute > 0 {
		h.addrChallenges = ratelimit.New(ratelimit.PerMinute(lim.ChallengesPerAddressPerMinute), lim.ChallengeBurstPerAddress, h.now)
	}
	if lim.AuthFailuresPerAddressPerMinute > 0 {
		h.addrFailures = ratelimit.New(ratelimit.PerMinute(lim.AuthFailuresPerAddressPerMinute), lim.AuthFailureBurstPerAddress, h.now)
	}
	if lim.ChallengesPerMinute > 0 {
		h.totalChallenges = ratelimit.New(ratelimit.PerMinute(lim.ChallengesPerMinute), lim.ChallengeBurst, h.now)
	}
	if lim.PollsPerDevice > 0 {
		h.devicePolls = ratelimit.New(float64(lim.PollsPerDevice)/lim.PollWindow.Seconds(), lim.PollsPerDevice, h.now)
	}
	if lim.RegistersPerDevice > 0 {
		h.deviceRegisters = ratelimit.New(float64(lim.RegistersPerDevice)/lim.RegisterWindow.Seconds(), lim.RegistersPerDevice, h.now)
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	return h, nil
}

// ID names the hook in mochi's logs.
func (h *Hook) ID() string { return "dps" }

// Provides declares the events this hook handles.
func (h *Hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSessionEstablish,
		mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnPacketRead,
		mqtt.OnPublish, mqtt.OnPacketProcessed:
		return true
	}
	return false
}

// Stop cancels outstanding service calls (mochi calls it from Server.Close).
func (h *Hook) Stop() error {
	h.cancel()
	return nil
}

// session is the hook's state for one authenticated connection.
type session struct {
	cl         *mqtt.Client
	id         provision.Identity
	trackingID string // of the CONNECT
	addr       string // key of the remote address, for per-address limits (ratelimit.AddressKey)

	// guarded by Hook.mu
	established bool
	released    bool
	estTimer    *time.Timer
	idle        *time.Timer // restricted: closes after RestrictedIdleTimeout without a TPM register
	lifetime    *time.Timer // restricted: closes RestrictedLifetime after the CONNACK

	// touched only by the client's read goroutine
	pendingReq *request
	challenges int
	requests   *ratelimit.Bucket
}

func (s *session) restricted() bool { return s.id.Method == provision.AuthRestricted }

// request is one device request waiting for its answer.
type request struct {
	topic      RequestTopic
	body       []byte
	trackingID string
	ackID      uint16        // packet id to acknowledge (QoS 1), 0 for QoS 0
	throttle   time.Duration // > 0: answer 429 with this retry-after
	// notTPMRegister: on a restricted session, a request other than a
	// register with tpm (set for a poll in OnPublish, for a register once
	// answer has read its body); the session is closed once it is answered.
	notTPMRegister bool
}

// connectionStater is satisfied by *tls.Conn and by the broker's WebSocket
// connections over TLS.
type connectionStater interface {
	ConnectionState() tls.ConnectionState
}

// OnConnectAuthenticate authenticates a CONNECT with the service, applies the
// failed-authentication budget of the address, the restricted session caps
// and the takeover rule, and remembers the identity for the connection. A
// refusal gets CONNACK "not authorized" (3.1.1 code 5), or "server
// unavailable" (code 3) when the service, a budget or a cap says so.
func (h *Hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	if cl.Net.Inline {
		return true
	}
	// A will would be fanned out by mochi on disconnect, bypassing OnPublish.
	atomic.StoreUint32(&cl.Properties.Will.Flag, 0)

	addr := ratelimit.AddressKey(cl.Net.Remote, h.limits.IPv6PrefixLen)
	if ok, _ := h.addrFailures.Ready(addr); !ok {
		// The address has spent its budget of refused CONNECTs: refuse
		// before the service does any key work for it.
		h.refusals.Refused(cl.Net.Listener, refusal.AuthFailureBudget, addr)
		return h.refuse(cl, packets.ErrServerUnavailable)
	}

	c := provision.Connect{
		ClientID:   pk.Connect.ClientIdentifier,
		Username:   string(pk.Connect.Username),
		RemoteAddr: cl.Net.Remote,
		TrackingID: trackid.New(),
	}
	if pk.Connect.PasswordFlag {
		c.Password = append([]byte{}, pk.Connect.Password...)
	}
	if cs, ok := cl.Net.Conn.(connectionStater); ok {
		c.PeerChain = append([]*x509.Certificate(nil), cs.ConnectionState().PeerCertificates...)
	}
	log := h.log.With("trackingId", c.TrackingID, "clientId", c.ClientID, "remote", cl.Net.Remote, "listener", cl.Net.Listener)

	ctx, cancel := context.WithTimeout(h.ctx, h.limits.RequestTimeout)
	start := h.now()
	id, err := h.svc.Authenticate(ctx, c)
	cancel()
	h.observeConnect(err, start)
	if err != nil && !errors.Is(err, provision.ErrUnavailable) {
		h.addrFailures.Charge(addr)
	}
	if err != nil {
		// The service has logged the refusal, with its reason and trackingId.
		if errors.Is(err, provision.ErrUnavailable) {
			return h.refuse(cl, packets.ErrServerUnavailable)
		}
		return false
	}
	s := &session{
		cl:         cl,
		id:         id,
		trackingID: c.TrackingID,
		addr:       addr,
	}
	// Give mochi a client id of its own for this connection: mochi's
	// takeover (inheritClientSession) looks the id up in its client list
	// after OnSessionEstablish, so with shared ids a concurrent CONNECT under
	// the same id (anyone may open a restricted session under any id) could
	// be found there and stopped by mochi. Takeover is this hook's alone.
	// The client is not yet in mochi's list, so nothing else reads cl.ID.
	cl.ID = c.ClientID + "#" + c.TrackingID
	if h.limits.RequestsPerConnectionPerMinute > 0 {
		s.requests = ratelimit.NewBucket(ratelimit.PerMinute(h.limits.RequestsPerConnectionPerMinute), h.limits.RequestBurstPerConnection, h.now())
	}

	var victim *session
	h.mu.Lock()
	switch {
	case h.draining:
		h.mu.Unlock()
		log.Info("connect refused", "error", ErrShuttingDown)
		h.refused(RefusedShuttingDown)
		return h.refuse(cl, packets.ErrServerUnavailable)
	case s.restricted():
		if h.limits.RestrictedSessions > 0 && h.restricted >= h.limits.RestrictedSessions {
			h.mu.Unlock()
			log.Warn("connect refused: restricted session cap reached", "cap", h.limits.RestrictedSessions)
			h.refused(RefusedRestrictedCap)
			return h.refuse(cl, packets.ErrServerUnavailable)
		}
		if !h.restrictedByAddr.Acquire(s.addr) {
			h.mu.Unlock()
			h.refusals.Refused(cl.Net.Listener, refusal.RestrictedAddressCap, s.addr)
			return h.refuse(cl, packets.ErrServerUnavailable)
		}
		h.restricted++
	default:
		if old := h.byID[id.RegistrationID]; old != nil {
			if old.id.Method > id.Method {
				h.mu.Unlock()
				log.Info("connect refused: a more strongly authenticated session holds this id",
					"registrationId", id.RegistrationID)
				h.refused(RefusedWeakerTakeover)
				return false
			}
			victim = old
		}
		h.byID[id.RegistrationID] = s
	}
	h.sessions[cl] = s
	s.estTimer = time.AfterFunc(establishTimeout, func() { h.abandon(s) })
	h.mu.Unlock()

	if victim != nil {
		log.Info("session takeover", "registrationId", id.RegistrationID, "oldRemote", victim.cl.Net.Remote)
		h.release(victim)
		victim.cl.Stop(ErrTakenOver) // close without a DISCONNECT packet (3.1.1 has none from servers)
	}
	log.Info("connected", "registrationId", id.RegistrationID, "method", methodName(id.Method))
	return true
}

// refuse sends a CONNACK with code, closes the connection and returns false;
// mochi's own refusal CONNACK then fails on the closed connection.
func (h *Hook) refuse(cl *mqtt.Client, code packets.Code) bool {
	_ = h.srv.SendConnack(cl, code, false, nil)
	cl.Stop(code)
	return false
}

// methodName names an authentication method for logs.
func methodName(m provision.AuthMethod) string {
	switch m {
	case provision.AuthRestricted:
		return "restricted"
	case provision.AuthTPM:
		return "tpm"
	case provision.AuthSymmetricKey:
		return "symmetricKey"
	case provision.AuthX509:
		return "x509"
	}
	return fmt.Sprintf("method(%d)", int(m))
}

// OnSessionEstablish makes sure mochi finds no session to inherit: the
// broker keeps no session state (SessionPresent is always 0), and mochi's own
// takeover would write a DISCONNECT packet to a 3.1.1 client. Client ids are
// unique per connection (see OnConnectAuthenticate), so this only guards
// against a collision. Takeover is decided in OnConnectAuthenticate.
func (h *Hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	if other, ok := h.srv.Clients.Get(cl.ID); ok && other != cl {
		h.srv.Clients.Delete(cl.ID)
	}
}

// OnSessionEstablished marks the session established (the CONNACK has been
// sent) and, for a restricted session, starts its idle timer.
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	h.mu.Lock()
	s := h.sessions[cl]
	if s == nil || s.released {
		h.mu.Unlock()
		cl.Stop(ErrTakenOver)
		return
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
	h.mu.Unlock()
}

// abandon releases a session whose CONNACK was never sent.
func (h *Hook) abandon(s *session) {
	h.mu.Lock()
	est := s.established
	h.mu.Unlock()
	if !est {
		h.release(s)
		h.mu.Lock()
		if h.sessions[s.cl] == s {
			delete(h.sessions, s.cl)
		}
		h.mu.Unlock()
		s.cl.Stop(ErrTakenOver)
	}
}

// release forgets a session's reservations. Idempotent.
func (h *Hook) release(s *session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.released {
		return
	}
	s.released = true
	if s.restricted() {
		h.restricted--
		h.restrictedByAddr.Release(s.addr)
	} else if h.byID[s.id.RegistrationID] == s {
		delete(h.byID, s.id.RegistrationID)
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

// OnDisconnect releases the connection's state.
func (h *Hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if cl.Net.Inline {
		return
	}
	h.mu.Lock()
	s := h.sessions[cl]
	delete(h.sessions, cl)
	h.mu.Unlock()
	if s != nil {
		h.release(s)
	}
	// mochi keeps 3.1.1 CleanSession=0 clients for resumption; we never resume.
	if !expire {
		if cur, ok := h.srv.Clients.Get(cl.ID); ok && cur == cl {
			h.srv.Clients.Delete(cl.ID)
		}
		h.srv.UnsubscribeClient(cl)
	}
	if s != nil {
		h.log.Info("disconnected", "trackingId", s.trackingID, "registrationId", s.id.RegistrationID, "cause", err)
	}
}

// session returns the state of an established connection, or nil.
func (h *Hook) session(cl *mqtt.Client) *session {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sessions[cl]
	if s == nil || !s.established || s.released {
		return nil
	}
	return s
}

// OnACLCheck allows a subscription only within the response topics
// (ResponseFilterAllowed) and a publish only to a request topic; a refused
// publish closes the connection (mochi would drop a QoS 0 one silently).
// The inline client bypasses.
func (h *Hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	if !write {
		return ResponseFilterAllowed(topic)
	}
	if _, err := ParseRequestTopic(topic); err != nil {
		h.closeFor(cl, ErrTopicRefused, "topic", topic)
		return false
	}
	return true
}

// closeFor logs why and closes the connection without a DISCONNECT packet.
func (h *Hook) closeFor(cl *mqtt.Client, why error, args ...any) {
	tid := ""
	h.mu.Lock()
	if s := h.sessions[cl]; s != nil {
		tid = s.trackingID
	}
	h.mu.Unlock()
	h.log.Info("closing connection", append([]any{"trackingId", tid, "clientId", cl.ID, "reason", why}, args...)...)
	cl.Stop(why)
}

// OnPacketRead checks every PUBLISH before mochi validates it, so that a
// publish to any other topic (wildcards and $-topics included, which mochi
// would drop silently) or at QoS 2 closes the connection.
func (h *Hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	if pk.FixedHeader.Qos > 1 {
		h.closeFor(cl, ErrQoS2)
		return pk, packets.ErrRejectPacket
	}
	if _, err := ParseRequestTopic(pk.TopicName); err != nil {
		h.closeFor(cl, ErrTopicRefused, "topic", pk.TopicName)
		return pk, packets.ErrRejectPacket
	}
	return pk, nil
}

// OnPublish takes a request out of mochi's hands: it is parked on the
// session and answered by OnPacketProcessed. packets.ErrRejectPacket makes
// mochi drop the publish without fan-out and without a PUBACK: the PUBACK is
// written with the answer (Hook.write).
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, packets.CodeSuccessIgnore
	}
	rt, err := ParseRequestTopic(pk.TopicName)
	if err != nil {
		h.closeFor(cl, ErrTopicRefused, "topic", pk.TopicName)
		return pk, packets.ErrRejectPacket
	}
	s := h.session(cl)
	if s == nil {
		cl.Stop(ErrShuttingDown)
		return pk, packets.ErrRejectPacket
	}
	req := request{topic: rt, body: pk.Payload, trackingID: trackid.New()}
	if pk.FixedHeader.Qos > 0 {
		req.ackID = pk.PacketID
	}
	if s.restricted() {
		// Only a register with tpm keeps a restricted session going (its
		// idle timer is reset in answer, once the body has been read).
		req.notTPMRegister = rt.Kind != KindRegister
		if rt.Kind == KindRegister {
			s.challenges++
			if h.limits.ChallengesPerConnection > 0 && s.challenges > h.limits.ChallengesPerConnection {
				h.closeFor(cl, ErrTooManyChallenges, "trackingId", req.trackingID)
				return pk, packets.ErrRejectPacket
			}
			if ok, wait := h.addrChallenges.Allow(s.addr); !ok {
				req.throttle = wait
			} else if ok, wait := h.totalChallenges.Allow(""); !ok {
				req.throttle = wait
			}
		}
	}
	if req.throttle == 0 {
		if ok, wait := s.requests.Allow(h.now()); !ok {
			req.throttle = wait
		}
	}
	if req.throttle == 0 && !s.restricted() {
		req.throttle = h.deviceThrottle(s.id.RegistrationID, rt.Kind)
	}
	s.pendingReq = &req
	return pk, packets.ErrRejectPacket
}

// OnPacketProcessed answers a parked request: mochi calls it on the client's
// read goroutine after processing the PUBLISH.
func (h *Hook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	if cl.Net.Inline || pk.FixedHeader.Type != packets.Publish {
		return
	}
	s := h.session(cl)
	if s == nil || s.pendingReq == nil {
		return
	}
	req := *s.pendingReq
	s.pendingReq = nil
	if err != nil {
		return // mochi failed the packet; it closes the connection
	}
	h.mu.Lock()
	if h.draining {
		h.mu.Unlock()
		h.closeFor(cl, ErrShuttingDown)
		return
	}
	h.pending++
	h.mu.Unlock()
	if !cl.Closed() {
		h.answer(s, req)
	}
	h.done()
}

// done marks one request finished.
func (h *Hook) done() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pending--
	if h.pending == 0 && h.draining {
		select {
		case <-h.drained:
		default:
			close(h.drained)
		}
	}
}

// Drain stops taking new requests and waits until every request being
// answered has been, or ctx ends. New CONNECTs are refused from now on.
func (h *Hook) Drain(ctx context.Context) error {
	h.mu.Lock()
	if !h.draining {
		h.draining = true
		if h.pending == 0 {
			close(h.drained)
		}
	}
	h.mu.Unlock()
	select {
	case <-h.drained:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("hooks: drain: %w", ctx.Err())
	}
}

// CloseAll closes every connection the hook knows, without DISCONNECT packets.
func (h *Hook) CloseAll() {
	h.mu.Lock()
	cls := make([]*mqtt.Client, 0, len(h.sessions))
	for cl := range h.sessions {
		cls = append(cls, cl)
	}
	h.mu.Unlock()
	for _, cl := range cls {
		cl.Stop(ErrShuttingDown)
	}
}

// Sessions reports the live sessions and how many of them are restricted.
func (h *Hook) Sessions() (total, restricted int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions), h.restricted
}

// deviceThrottle spends one token of an authenticated device's register or
// poll budget and returns how long it must wait when none is left (0: go
// ahead). Only authenticated sessions come here: a registrationId is never
// throttled for challenges, so an outsider who knows it cannot lock it out.
func (h *Hook) deviceThrottle(registrationID string, kind RequestKind) time.Duration {
	l := h.devicePolls
	if kind == KindRegister {
		l = h.deviceRegisters
	}
	if ok, wait := l.Allow(registrationID); !ok {
		return wait
	}
	return 0
}
