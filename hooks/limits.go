package hooks

import (
	"context"
	"time"

	"github.com/tpmdps/dpsd/internal/ratelimit"
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

// limiters are the rate limits of Limits shared by every connection, built
// once by New; a nil limiter is a disabled limit (ratelimit.Limiter allows
// everything then). The per-connection request bucket lives on the session.
type limiters struct {
	addrChallenges  *ratelimit.Limiter
	addrFailures    *ratelimit.Limiter // refused CONNECTs per address: Ready before, Charge after
	totalChallenges *ratelimit.Limiter
	devicePolls     *ratelimit.Limiter // keyed by authenticated registrationId
	deviceRegisters *ratelimit.Limiter // keyed by authenticated registrationId
}

// newLimiters builds the limiters of lim (with its defaults applied) on the
// clock now.
func newLimiters(lim Limits, now func() time.Time) limiters {
	var l limiters
	if lim.ChallengesPerAddressPerMinute > 0 {
		l.addrChallenges = ratelimit.New(ratelimit.PerMinute(lim.ChallengesPerAddressPerMinute), lim.ChallengeBurstPerAddress, now)
	}
	if lim.AuthFailuresPerAddressPerMinute > 0 {
		l.addrFailures = ratelimit.New(ratelimit.PerMinute(lim.AuthFailuresPerAddressPerMinute), lim.AuthFailureBurstPerAddress, now)
	}
	if lim.ChallengesPerMinute > 0 {
		l.totalChallenges = ratelimit.New(ratelimit.PerMinute(lim.ChallengesPerMinute), lim.ChallengeBurst, now)
	}
	if lim.PollsPerDevice > 0 {
		l.devicePolls = ratelimit.New(float64(lim.PollsPerDevice)/lim.PollWindow.Seconds(), lim.PollsPerDevice, now)
	}
	if lim.RegistersPerDevice > 0 {
		l.deviceRegisters = ratelimit.New(float64(lim.RegistersPerDevice)/lim.RegisterWindow.Seconds(), lim.RegistersPerDevice, now)
	}
	return l
}

// requestBucket is a new connection's bucket of register and poll
// requests, or nil (no limit) when RequestsPerConnectionPerMinute is off.
func (l Limits) requestBucket(now time.Time) *ratelimit.Bucket {
	if l.RequestsPerConnectionPerMinute <= 0 {
		return nil
	}
	return ratelimit.NewBucket(ratelimit.PerMinute(l.RequestsPerConnectionPerMinute), l.RequestBurstPerConnection, now)
}

// challengeThrottle spends one token of the challenge budgets of addr and
// of the whole service and returns how long to wait when one is empty (0:
// go ahead).
func (l *limiters) challengeThrottle(addr string) time.Duration {
	if ok, wait := l.addrChallenges.Allow(addr); !ok {
		return wait
	}
	if ok, wait := l.totalChallenges.Allow(""); !ok {
		return wait
	}
	return 0
}

// deviceThrottle spends one token of an authenticated device's register or
// poll budget and returns how long it must wait when none is left (0: go
// ahead). Only authenticated sessions come here: a registrationId is never
// throttled for challenges, so an outsider who knows it cannot lock it out.
func (l *limiters) deviceThrottle(registrationID string, kind RequestKind) time.Duration {
	lim := l.devicePolls
	if kind == KindRegister {
		lim = l.deviceRegisters
	}
	if ok, wait := lim.Allow(registrationID); !ok {
		return wait
	}
	return 0
}

// Cluster-wide limits (Config.Cluster, the etcd store): the budgets that
// must hold however a load balancer spreads requests over the nodes are
// also counted in the shared store, in fixed windows: TPM challenges in
// total (ChallengesPerMinute per minute), and each authenticated device's
// registers (RegistersPerDevice per RegisterWindow) and polls
// (PollsPerDevice per PollWindow). The per-node token buckets still apply
// first; the shared count is one etcd write per request that passed them.

// clusterThrottle counts req in the cluster's window for its kind and
// returns how long to wait when the window's budget is spent (0: go
// ahead), or unavailable when the count could not be made (the shared
// store cannot answer: refuse rather than let the limit lapse).
func (h *Hook) clusterThrottle(s *session, req request) (time.Duration, bool) {
	var name string
	var limit int
	var window time.Duration
	switch {
	case s.restricted() && req.topic.Kind == KindRegister:
		name, limit, window = "challenges", h.limits.ChallengesPerMinute, time.Minute
	case s.restricted():
		return 0, false
	case req.topic.Kind == KindRegister:
		name, limit, window = "register/"+s.id.RegistrationID, h.limits.RegistersPerDevice, h.limits.RegisterWindow
	default:
		name, limit, window = "poll/"+s.id.RegistrationID, h.limits.PollsPerDevice, h.limits.PollWindow
	}
	if limit <= 0 {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(h.ctx, h.limits.RequestTimeout)
	defer cancel()
	n, end, err := h.cluster.CountInWindow(ctx, name, window)
	if err != nil {
		return 0, true
	}
	if n > int64(limit) {
		return max(end.Sub(h.now()), time.Second), false
	}
	return 0, false
}
