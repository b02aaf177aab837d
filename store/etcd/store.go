package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/gate"
	"github.com/tpmdps/dpsd/store/internal/seal"
)

// Errors of the etcd engine. The errors every engine shares are the store
// package's; a store that cannot reach a quorum of etcd answers errors that
// wrap store.ErrUnavailable.
var (
	// ErrKey: the data key is missing, malformed, or not the key this
	// prefix's secrets were sealed with.
	ErrKey = errors.New("store: bad data key")
	// ErrSchema: the prefix holds a layout this build does not know.
	ErrSchema = errors.New("store: unsupported schema version")
	// ErrURL: a store URL is not etcd://host:port[,host:port...][/prefix].
	ErrURL = errors.New("store: bad etcd URL")
)

// SchemaVersion is the key layout version this build writes (meta/schema).
const SchemaVersion = 1

// Defaults of Options.
const (
	// DefaultPrefix is the key prefix when the URL names none.
	DefaultPrefix = "/dpsd/"
	// DefaultRequestTimeout bounds every call to etcd that has no earlier
	// deadline of its own.
	DefaultRequestTimeout = 5 * time.Second
	// DefaultDialTimeout bounds Open's first request.
	DefaultDialTimeout = 10 * time.Second
)

// Options configures Open.
type Options struct {
	// Endpoints are the etcd client URLs or host:port pairs. Required
	// unless Client is set.
	Endpoints []string
	// Prefix is the key prefix every key of this store starts with
	// (default DefaultPrefix); a trailing "/" is added when missing.
	Prefix string
	// TLS, when set, is the client TLS configuration (CA, client
	// certificate) for the etcd endpoints.
	TLS *tls.Config
	// Key is the data key (seal.KeySize bytes) the secrets of records are
	// sealed with: the cluster's shared store key. Required.
	Key []byte
	// Logger receives open and sweep events (default: discard).
	Logger *slog.Logger
	// Now is the clock for record times, expiry checks and windows (default time.Now).
	Now func() time.Time
	// MaxGroups bounds the number of enrollment groups (0 or negative: no limit).
	MaxGroups int
	// RequestTimeout bounds each call to etcd (default DefaultRequestTimeout).
	RequestTimeout time.Duration
	// DialTimeout bounds Open's first request (default DefaultDialTimeout).
	DialTimeout time.Duration
	// Client, when set, is used instead of a client of Endpoints; Close
	// does not close it.
	Client *clientv3.Client
}

// ParseURL reads a store URL of the form
// etcd://host:port[,host:port...][/prefix] into endpoints and a prefix
// ("/prefix/", or DefaultPrefix when the URL has no path).
func ParseURL(raw string) (endpoints []string, prefix string, err error) {
	rest, ok := strings.CutPrefix(raw, "etcd://")
	hosts, path, _ := strings.Cut(rest, "/")
	if !ok || hosts == "" || strings.ContainsAny(rest, "?#@ ") {
		return nil, "", fmt.Errorf("%w: %q (want etcd://host:2379[,host2:2379...][/prefix])", ErrURL, raw)
	}
	for _, h := range strings.Split(hosts, ",") {
		if h == "" {
			return nil, "", fmt.Errorf("%w: %q has an empty endpoint", ErrURL, raw)
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(h, "2379")
		}
		if _, err := url.Parse("http://" + h); err != nil {
			return nil, "", fmt.Errorf("%w: %q: %w", ErrURL, h, err)
		}
		endpoints = append(endpoints, h)
	}
	prefix = DefaultPrefix
	if p := strings.Trim(path, "/"); p != "" {
		prefix = "/" + p + "/"
	}
	return endpoints, prefix, nil
}

// Store is the etcd engine's store.Store: the records of one installation
// under one key prefix of an etcd cluster, shared by every dpsd node that
// opens the same prefix. Beyond the interface it records the single use of
// TPM challenges (store.ChallengeRecorder), counts rate-limit windows for
// the whole cluster (store.WindowCounter), checks its own invariants
// (Check) and restores backups (Restore).
type Store struct {
	cli       *clientv3.Client
	ownClient bool
	prefix    string
	sealer    *seal.Sealer
	log       *slog.Logger
	now       func() time.Time
	maxGroups int
	timeout   time.Duration
	leases    leaseCache

	gate gate.Gate // admits calls until Close
}

var (
	_ store.Store              = (*Store)(nil)
	_ store.ChallengeRecorder  = (*Store)(nil)
	_ store.WindowCounter      = (*Store)(nil)
	_ store.RegistrationLister = (*Store)(nil)
)

// Open connects to etcd, checks the prefix's schema version and that Key
// is the key its secrets are sealed with (writing both on first use), and
// returns the store. It fails when etcd does not answer within DialTimeout.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if len(opts.Key) != seal.KeySize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrKey, len(opts.Key), seal.KeySize)
	}
	sealer, err := seal.New(opts.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKey, err)
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(opts.Prefix, "/") {
		opts.Prefix += "/"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	s := &Store{prefix: opts.Prefix, sealer: sealer, log: opts.Logger, now: opts.Now,
		maxGroups: max(opts.MaxGroups, 0), timeout: opts.RequestTimeout, cli: opts.Client}
	if s.cli == nil {
		if len(opts.Endpoints) == 0 {
			return nil, fmt.Errorf("%w: no endpoints", ErrURL)
		}
		// clientv3.New does not dial: it returns at once even when no
		// endpoint answers, so the first request below is the real check.
		s.cli, err = clientv3.New(clientv3.Config{
			Endpoints:            opts.Endpoints,
			TLS:                  opts.TLS,
			DialTimeout:          opts.DialTimeout,
			DialKeepAliveTime:    10 * time.Second,
			DialKeepAliveTimeout: 5 * time.Second,
			Logger:               zap.NewNop(),
		})
		if err != nil {
			return nil, fmt.Errorf("store: etcd client for %v: %w", opts.Endpoints, err)
		}
		s.ownClient = true
	}
	s.leases.init(s)
	ictx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
	defer cancel()
	if err := s.init(ictx, opts.Key); err != nil {
		if s.ownClient {
			_ = s.cli.Close()
		}
		return nil, fmt.Errorf("store: open etcd %v prefix %s: %w", opts.Endpoints, s.prefix, err)
	}
	if n, err := s.CountGroups(ctx); err == nil && s.maxGroups > 0 && n > s.maxGroups {
		s.log.Warn("store: more enrollment groups than the limit: no new group can be created until some are deleted",
			"prefix", s.prefix, "groups", n, "limit", s.maxGroups)
	}
	s.log.Info("store: opened", "engine", "etcd", "endpoints", opts.Endpoints, "prefix", s.prefix, "schema", SchemaVersion)
	return s, nil
}

// init writes the schema version and key check on first use, or checks them.
func (s *Store) init(ctx context.Context, key []byte) error {
	want := seal.KeyCheck(key)
	schemaKey, checkKey := s.k(keySchema), s.k(keyCheck)
	resp, err := s.cli.Txn(clientv3.WithRequireLeader(ctx)).
		If(clientv3.Compare(clientv3.CreateRevision(schemaKey), "=", 0)).
		Then(clientv3.OpPut(schemaKey, strconv.Itoa(SchemaVersion)), clientv3.OpPut(checkKey, string(want))).
		Else(clientv3.OpGet(schemaKey), clientv3.OpGet(checkKey)).Commit()
	if err != nil {
		return wrapErr(err)
	}
	if resp.Succeeded {
		s.log.Info("store: initialised a new prefix", "prefix", s.prefix)
		return nil
	}
	sv := resp.Responses[0].GetResponseRange().Kvs
	cv := resp.Responses[1].GetResponseRange().Kvs
	if len(sv) != 1 {
		return fmt.Errorf("%w: %s has no schema version", store.ErrCorrupt, schemaKey)
	}
	v, err := strconv.Atoi(string(sv[0].Value))
	if err != nil || v < 1 {
		return fmt.Errorf("%w: %s is %q", store.ErrCorrupt, schemaKey, sv[0].Value)
	}
	if v > SchemaVersion {
		return fmt.Errorf("%w: prefix %s has schema version %d, this build supports up to version %d", ErrSchema, s.prefix, v, SchemaVersion)
	}
	if len(cv) != 1 || !seal.EqualCheck(cv[0].Value, want) {
		return fmt.Errorf("%w: the store key is not the key of prefix %s (check the cluster secrets)", ErrKey, s.prefix)
	}
	return nil
}

// Prefix returns the key prefix of the store.
func (s *Store) Prefix() string { return s.prefix }

// Client returns the etcd client (for operations such as health checks).
func (s *Store) Client() *clientv3.Client { return s.cli }

// enter admits one call: it fails on a cancelled ctx or a closed store,
// registers the call so that Close waits for it, and returns a context
// bounded by the request timeout that fails fast without an etcd leader.
func (s *Store) enter(ctx context.Context) (context.Context, func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if err := s.gate.Enter(); err != nil {
		return nil, nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	return clientv3.WithRequireLeader(cctx), func() { cancel(); s.gate.Leave() }, nil
}

// Close waits for in-flight calls, revokes nothing (leases end by
// themselves) and closes the client it opened. Later calls, Close
// included, return store.ErrClosed.
func (s *Store) Close() error {
	if err := s.gate.Close(); err != nil {
		return err
	}
	if s.ownClient {
		if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("store: close etcd client: %w", err)
		}
	}
	return nil
}

// wrapErr marks the errors that mean etcd could not be reached or has no
// quorum as store.ErrUnavailable (the caller answers "try again": 503,
// CONNACK server unavailable), keeping the original in the chain.
func wrapErr(err error) error {
	if err == nil || !unavailable(err) {
		return err
	}
	return fmt.Errorf("%w: etcd: %w", store.ErrUnavailable, err)
}

// unavailable reports whether err means etcd is unreachable, without a
// leader, stopping or out of space: not an answer about the data.
func unavailable(err error) bool {
	switch {
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, rpctypes.ErrNoLeader),
		errors.Is(err, rpctypes.ErrNotCapable),
		errors.Is(err, rpctypes.ErrStopped),
		errors.Is(err, rpctypes.ErrTimeout),
		errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail),
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost),
		errors.Is(err, rpctypes.ErrLeaderChanged),
		errors.Is(err, rpctypes.ErrNoSpace),
		errors.Is(err, rpctypes.ErrTooManyRequests),
		errors.Is(err, rpctypes.ErrUnhealthy):
		return true
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
			return true
		}
	}
	return strings.Contains(err.Error(), "raft: stopped")
}
