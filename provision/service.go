// Package provision is the provisioning service with no transport in it: it
// authenticates devices, runs the TPM challenge, allocates hubs, records
// registrations and answers polls. It takes request structs and returns
// response structs, so it is tested without a broker and could sit behind
// another transport (HTTP) unchanged. The MQTT hooks only translate.
package provision

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/hubconn"
	"github.com/tpmdps/dpsd/issuer"
	"github.com/tpmdps/dpsd/store"
)

// Defaults applied by New to zero Config fields.
const (
	// DefaultChallengeLifetime is how long a TPM challenge can be answered.
	DefaultChallengeLifetime = 10 * time.Minute
	// DefaultOperationLifetime is how long a finished operation can be polled.
	DefaultOperationLifetime = time.Hour
	// DefaultRetryAfter is the retry-after of a 202 when Config.RetryAfter is 0.
	DefaultRetryAfter = time.Second
	// MinChallengeSecretSize is the smallest accepted Config.ChallengeSecret.
	MinChallengeSecretSize = 32
)

// Config configures a Service. Zero fields take the defaults listed with them.
type Config struct {
	// IDScope is the broker's DPS ID scope; devices must name it. Required.
	IDScope string
	// Store holds enrollments, registrations and operations. Required.
	Store store.Store
	// ChallengeSecret derives TPM challenge keys: 32+ random bytes (dpsd
	// generates them once and keeps them in its data directory). Required.
	ChallengeSecret []byte
	// ChallengeLifetime bounds how long a TPM challenge can be answered (default 10 min).
	// Without Challenges, a challenge can also be answered only in the run
	// of the Service that issued it: the references used so far are
	// remembered in memory.
	ChallengeLifetime time.Duration
	// Challenges, when set, records the single use of every TPM challenge
	// in the store that the nodes of a cluster share (the etcd engine):
	// a challenge is then accepted by every Service on that store, also
	// one started after the issuing one stopped, and at most once in all.
	// When nil and Store implements store.ChallengeRecorder, Store is used;
	// otherwise used references are remembered in this Service's memory.
	Challenges store.ChallengeRecorder
	// MaxUsedChallenges bounds the used, unexpired challenge references
	// remembered (default DefaultMaxUsedChallenges); when it is reached, TPM
	// authentications are refused as unavailable until references expire.
	MaxUsedChallenges int
	// OperationLifetime is how long a finished operation can be polled (default 1 h).
	OperationLifetime time.Duration
	// SAS bounds token lifetimes; zero fields take attest's defaults
	// (attest.DefaultSASClockSkew, attest.DefaultSASMaxLifetime).
	SAS attest.SASPolicy
	// TPMRoots is the service-wide trust in EK certificates (dpsd's
	// tpm-roots directory): individual enrollments with
	// requireEkCertificate need a certificate that chains to its roots, and
	// its intermediates and CRLs also serve the chains of TPM groups, whose
	// roots are their own. Nil or empty: none.
	TPMRoots *attest.CertBundle
	// Hubs are service-wide hubs for the hashed allocation when an
	// enrollment names none, beside the linked hubs (hubs.go says how the
	// two combine): allocated with weight 1, never handed off to.
	Hubs []string
	// PlaceholderHubs marks Hubs as a placeholder (dpsd's default): they
	// count only while no hub is linked.
	PlaceholderHubs bool
	// RetryAfter is the retry-after of a register 202 and a poll 202: 0 means
	// DefaultRetryAfter (1 s), a negative value means 0 s ("ask again now";
	// a registration without outside I/O is synchronous, so the first poll
	// already finds the result). Operations still assigning through the
	// outbox answer Handoff.RetryAfter instead.
	RetryAfter time.Duration
	// Custom calls custom allocation webhooks (allocator.Webhook); nil:
	// registrations under a custom allocation policy fail with 400207.
	Custom allocator.Custom
	// Connectors builds the hand-off connector of each linked hub
	// (hubconn.HTTPFactory); nil: linked hubs are only allocated, nothing
	// registers devices in them.
	Connectors hubconn.Factory
	// Handoff tunes the outbox of registrations that need outside I/O
	// (handoff.go); zero fields take its defaults.
	Handoff HandoffConfig
	// Rand is the randomness source (default crypto/rand.Reader).
	Rand io.Reader
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives decisions and their reasons, never keys or tokens (default slog.Default()).
	Logger *slog.Logger
	// Observer, if set, receives registration outcomes, issued challenges and
	// refused CONNECTs (for metrics); nil means off.
	Observer Observer
	// Issuer, if set, signs the operational certificates that devices ask
	// for with a CSR when their enrollment or group names a credential
	// policy (certificate.go). nil: no certificates are issued, and a
	// register with a CSR gets the answer IoT Edge falls back on.
	Issuer issuer.Issuer
}

// Service is the provisioning service. Safe for concurrent use: records are
// in the store; in memory it holds its configuration, the id of this run,
// the challenge references used in this run (unless the store records
// them for a cluster), a cache of parsed TPM keys and
// the enrollment groups' key material (groups.go), with the EK certificate
// trust and its verdicts (ekcert.go), kept current by the store's groups
// revision.
type Service struct {
	cfg        Config
	log        *slog.Logger
	retryAfter time.Duration
	tpmKeys    *tpmKeyCache
	run        runID
	usedRefs   *usedRefs               // single node: used references in memory
	challenges store.ChallengeRecorder // cluster: used references in the store
	groupCache groupCache
	hubCache   hubCache
	handoff    handoffState
	// onX509Verify, when set (by tests), is told the group of every CA an
	// X.509 chain is verified against.
	onX509Verify func(groupID string)
}

// ErrInvalidConfig is returned by New for an unusable Config.
var ErrInvalidConfig = errors.New("provision: invalid config")

// New validates cfg, applies defaults and returns a Service.
func New(cfg Config) (*Service, error) {
	if strings.TrimSpace(cfg.IDScope) == "" {
		return nil, fmt.Errorf("%w: IDScope is empty", ErrInvalidConfig)
	}
	if cfg.Store == nil {
		return nil, fmt.Errorf("%w: Store is nil", ErrInvalidConfig)
	}
	if len(cfg.ChallengeSecret) < MinChallengeSecretSize {
		return nil, fmt.Errorf("%w: ChallengeSecret has %d bytes, want at least %d",
			ErrInvalidConfig, len(cfg.ChallengeSecret), MinChallengeSecretSize)
	}
	if cfg.ChallengeLifetime < 0 || cfg.OperationLifetime < 0 {
		return nil, fmt.Errorf("%w: negative lifetime", ErrInvalidConfig)
	}
	if cfg.MaxUsedChallenges < 0 {
		return nil, fmt.Errorf("%w: negative MaxUsedChallenges", ErrInvalidConfig)
	}
	hubs := make([]string, 0, len(cfg.Hubs))
	for _, h := range cfg.Hubs {
		h = strings.TrimSpace(h)
		if h == "" {
			return nil, fmt.Errorf("%w: empty hub name in Hubs", ErrInvalidConfig)
		}
		hubs = append(hubs, h)
	}
	cfg.Hubs = hubs
	// Copy the secret so a caller reusing its slice cannot change our keys.
	cfg.ChallengeSecret = append([]byte(nil), cfg.ChallengeSecret...)
	if cfg.ChallengeLifetime == 0 {
		cfg.ChallengeLifetime = DefaultChallengeLifetime
	}
	if cfg.OperationLifetime == 0 {
		cfg.OperationLifetime = DefaultOperationLifetime
	}
	if cfg.MaxUsedChallenges == 0 {
		cfg.MaxUsedChallenges = DefaultMaxUsedChallenges
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ra := cfg.RetryAfter
	switch {
	case ra == 0:
		ra = DefaultRetryAfter
	case ra < 0:
		ra = 0
	}
	if err := cfg.Handoff.withDefaults(); err != nil {
		return nil, err
	}
	var run runID
	if _, err := io.ReadFull(cfg.Rand, run[:]); err != nil {
		return nil, fmt.Errorf("provision: run id: %w", err)
	}
	svc := &Service{
		cfg:        cfg,
		log:        cfg.Logger.With(slog.String("component", "provision")),
		retryAfter: ra,
		tpmKeys:    newTPMKeyCache(),
		run:        run,
		challenges: cfg.Challenges,
	}
	if svc.challenges == nil {
		svc.challenges, _ = cfg.Store.(store.ChallengeRecorder)
	}
	if svc.challenges == nil {
		svc.usedRefs = newUsedRefs(cfg.MaxUsedChallenges)
	}
	svc.handoff.init(run)
	return svc, nil
}

// IDScope returns the ID scope the service answers for.
func (s *Service) IDScope() string { return s.cfg.IDScope }
