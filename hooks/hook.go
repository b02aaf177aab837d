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
//
// hook.go holds the mochi callbacks, sessions.go the table of admitted
// connections (takeover, drain, release), limits.go the limits and their
// limiters, answer.go the answering of one request, topic.go the topic
// grammar and metrics.go the optional Metrics.
package hooks

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/internal/ratelimit"
	"github.com/tpmdps/dpsd/internal/refusal"
	"github.com/tpmdps/dpsd/internal/trackid"
	"github.com/tpmdps/dpsd/provision"
	"github.com/tpmdps/dpsd/store"
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

// Service is what the hook asks of the provisioning service: to
// authenticate a CONNECT and to answer register and poll requests.
// *provision.Service implements it.
type Service interface {
	// Authenticate decides what a CONNECT may do. Its errors wrap
	// provision.ErrNotAuthorized or provision.ErrUnavailable and have been
	// logged by the service.
	Authenticate(ctx context.Context, c provision.Connect) (provision.Identity, error)
	// Register answers a register request of the connection id.
	Register(ctx context.Context, id provision.Identity, req provision.RegisterRequest, trackingID string) provision.Response
	// Poll answers an operation status request of the connection id.
	Poll(ctx context.Context, id provision.Identity, operationID, trackingID string) provision.Response
}

// *provision.Service is the Service dpsd runs.
var _ Service = (*provision.Service)(nil)

// Config configures a Hook.
type Config struct {
	// Service answers authentication, register and poll requests. Required.
	Service Service
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
	// Cluster, when set (the nodes of a cluster share an etcd store),
	// also counts the challenges in total and each device's registers and
	// polls in the shared store, so those limits hold for the whole
	// cluster (limits.go); nil: every limit is this node's own.
	Cluster store.WindowCounter
}

// Hook is the DPS mochi hook. Create it with New and add it with
// Server.AddHook before Serve. Safe for concurrent use.
type Hook struct {
	mqtt.HookBase

	svc    Service
	srv    *mqtt.Server
	limits Limits
	log    *slog.Logger
	now    func() time.Time

	metrics  Metrics             // nil: off
	refusals *refusal.Reporter   // nil: off
	cluster  store.WindowCounter // nil: per-node limits only

	limiters              // shared rate limits (limits.go)
	table    sessionTable // admitted connections (sessions.go)

	ctx    context.Context // cancelled by Stop: service calls give up
	cancel context.CancelFunc
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
		cluster:  cfg.Cluster,
		table:    newSessionTable(lim.RestrictedSessionsPerAddress),
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.now == nil {
		h.now = time.Now
	}
	h.limiters = newLimiters(lim, h.now)
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

// connectionStater is satisfied by *tls.Conn and by the broker's WebSocket
// connections over TLS.
type connectionStater interface {
	ConnectionState() tls.ConnectionState
}

// OnConnectAuthenticate authenticates a CONNECT with the service, applies the
// failed-authentication budget of the address, the restricted session caps
// and the takeover rule, and remembers the identity for the connection. A
// refusal gets CONNACK "not authorized" (3.1.1 code 5), or "server
// unavailable" (code 3) when the service, a budget or a cap says so, with
// Session Present 0, and the connection is closed ([MQTT-3.2.2-4] and
// [MQTT-3.2.2-5] in 3.1.1; [MQTT-3.1.4-2], [MQTT-3.2.2-6] and
// [MQTT-3.2.2-7] in MQTT 5).
func (h *Hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	if cl.Net.Inline {
		return true
	}
	// A will would be fanned out by mochi on disconnect, bypassing OnPublish,
	// so it is dropped: a deliberate departure from [MQTT-3.1.2-8] (3.1.1;
	// [MQTT-3.1.2-7] and [MQTT-3.1.2-8] in MQTT 5), which would have the
	// server keep it and publish it when the connection closes.
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
	s.requests = h.limits.requestBucket(h.now())

	victim, err := h.admit(s)
	switch {
	case errors.Is(err, ErrShuttingDown):
		log.Info("connect refused", "error", ErrShuttingDown)
		h.refused(RefusedShuttingDown)
		return h.refuse(cl, packets.ErrServerUnavailable)
	case errors.Is(err, errRestrictedCap):
		log.Warn("connect refused: restricted session cap reached", "cap", h.limits.RestrictedSessions)
		h.refused(RefusedRestrictedCap)
		return h.refuse(cl, packets.ErrServerUnavailable)
	case errors.Is(err, errRestrictedAddressCap):
		h.refusals.Refused(cl.Net.Listener, refusal.RestrictedAddressCap, s.addr)
		return h.refuse(cl, packets.ErrServerUnavailable)
	case errors.Is(err, errWeakerTakeover):
		log.Info("connect refused: a more strongly authenticated session holds this id",
			"registrationId", id.RegistrationID)
		h.refused(RefusedWeakerTakeover)
		return false
	}
	if victim != nil {
		log.Info("session takeover", "registrationId", id.RegistrationID, "oldRemote", victim.cl.Net.Remote)
		h.release(victim)
		victim.cl.Stop(ErrTakenOver) // closed without a DISCONNECT packet (see CloseAll)
	}
	log.Info("connected", "registrationId", id.RegistrationID, "method", id.Method.String())
	return true
}

// refuse sends a CONNACK with code, closes the connection and returns false;
// mochi's own refusal CONNACK then fails on the closed connection.
func (h *Hook) refuse(cl *mqtt.Client, code packets.Code) bool {
	_ = h.srv.SendConnack(cl, code, false, nil)
	cl.Stop(code)
	return false
}

// OnSessionEstablish makes sure mochi finds no session to inherit: the
// broker keeps no session state (Session Present is always 0, sessions.go),
// and mochi's own takeover would write a DISCONNECT packet to a 3.1.1
// client, to which a server never sends one (MQTT 3.1.1 section 3.14: a
// DISCONNECT goes from client to server only). Client ids are
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
// sent) and, for a restricted session, starts its idle and lifetime timers.
// A connection taken over meanwhile is closed.
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	if !h.establish(cl) {
		cl.Stop(ErrTakenOver)
	}
}

// OnDisconnect releases the connection's state.
func (h *Hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if cl.Net.Inline {
		return
	}
	s := h.remove(cl)
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

// OnACLCheck allows a subscription only within the response topics
// (ResponseFilterAllowed: any filter that cannot match a topic outside
// $dps/registrations/res/); mochi answers any other filter with a SUBACK failure code and keeps the connection (0x80 in
// 3.1.1, [MQTT-3.8.4-5], [MQTT-3.9.3-2]; 0x87 "not authorized" in MQTT 5,
// [MQTT-3.8.4-7]). It allows a publish:
// mochi asks about a publish only after OnPacketRead has let it through,
// and OnPacketRead closes the connection of any publish to a topic that is
// not a request topic (mochi would drop a refused QoS 0 publish silently).
// The inline client bypasses.
func (h *Hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	if !write {
		return ResponseFilterAllowed(topic)
	}
	return true
}

// closeFor logs why and closes the connection without a DISCONNECT packet.
func (h *Hook) closeFor(cl *mqtt.Client, why error, args ...any) {
	h.log.Info("closing connection", append([]any{"trackingId", h.trackingID(cl), "clientId", cl.ID, "reason", why}, args...)...)
	cl.Stop(why)
}

// OnPacketRead checks every PUBLISH before mochi validates it, so that a
// publish to any other topic (wildcards and $-topics included, which mochi
// would drop silently) or at QoS 2 closes the connection. QoS 2 is no part
// of the DPS protocol, and an MQTT 5 client has been told Maximum QoS 1 in
// its CONNACK, above which it must not publish ([MQTT-3.2.2-11]). The topic is
// parsed here, once: OnPublish takes the result from the session.
func (h *Hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	if pk.FixedHeader.Qos > 1 {
		h.closeFor(cl, ErrQoS2)
		return pk, packets.ErrRejectPacket
	}
	rt, err := ParseRequestTopic(pk.TopicName)
	if err != nil {
		h.closeFor(cl, ErrTopicRefused, "topic", pk.TopicName)
		return pk, packets.ErrRejectPacket
	}
	if s := h.session(cl); s != nil {
		s.inbound = inbound{topic: pk.TopicName, parsed: rt}
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
	s := h.session(cl)
	if s == nil {
		cl.Stop(ErrShuttingDown)
		return pk, packets.ErrRejectPacket
	}
	in := s.inbound
	s.inbound = inbound{}
	if in.topic == "" || in.topic != pk.TopicName {
		// OnPacketRead parses the topic of every PUBLISH before mochi gets
		// here; a publish it did not see is refused all the same.
		h.closeFor(cl, ErrTopicRefused, "topic", pk.TopicName)
		return pk, packets.ErrRejectPacket
	}
	rt := in.parsed
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
			req.throttle = h.challengeThrottle(s.addr)
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
	if !h.begin() {
		h.closeFor(cl, ErrShuttingDown)
		return
	}
	if !cl.Closed() {
		h.answer(s, req)
	}
	h.done()
}
