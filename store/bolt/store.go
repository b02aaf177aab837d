package bolt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/gate"
	"github.com/tpmdps/dpsd/store/internal/seal"
	berrors "go.etcd.io/bbolt/errors"
)

// Errors of the bbolt engine. Callers test them with errors.Is. The errors
// every engine shares (ErrNotFound, ErrInvalidID, ErrCorrupt, ...) are the
// store package's.
var (
	// ErrLocked: another process (or another open in this process) holds the
	// database file's exclusive lock and did not release it within
	// Options.Timeout. bbolt allows one writer per file.
	ErrLocked = errors.New("store: database file is locked")
	// ErrSchema: the file's schema version is newer than this build supports.
	ErrSchema = errors.New("store: unsupported schema version")
	// ErrKeyFile: the data key file is missing, malformed, too permissive or
	// belongs to another database.
	ErrKeyFile = errors.New("store: bad key file")
)

// Defaults of Options.
const (
	// DefaultLockTimeout is how long Open waits for the file lock.
	DefaultLockTimeout = 5 * time.Second
	// DefaultMaxBatchDelay is bbolt's db.Batch delay as set on the file.
	// The store's own writes no longer use db.Batch: concurrent writes are
	// coalesced by group commit (groupcommit.go), which waits for no timer.
	DefaultMaxBatchDelay = 2 * time.Millisecond
)

// Options configures Open. The zero value is usable.
type Options struct {
	// Timeout is how long to wait for the file lock (default 5 s). bbolt would
	// otherwise wait forever when another process holds the file.
	Timeout time.Duration
	// KeyFile is the data key file (default path + ".key"): 32 random bytes,
	// created on first open with mode 0600.
	KeyFile string
	// Logger receives open, migration and sweep events (default: discard).
	Logger *slog.Logger
	// Now is the clock for record times and expiry checks (default time.Now).
	Now func() time.Time
	// MaxBatchDelay overrides DefaultMaxBatchDelay (bbolt's db.Batch delay;
	// the store's writes use group commit and do not wait for it).
	MaxBatchDelay time.Duration
	// MaxGroups bounds the number of enrollment groups: PutGroup of a new
	// group when MaxGroups exist returns a *LimitError (0 or negative: no
	// limit). Groups beyond it in an existing file stay; only new ones are
	// refused.
	MaxGroups int
}

// Store is the embedded engine's store.Store: one bbolt file plus a data key
// file. It is safe for concurrent use; concurrent writes are coalesced by
// group commit and every acknowledged write has been fsynced. Beyond the
// interface it writes many enrollments in one transaction
// (store.EnrollmentBatcher) and checks its own invariants (Check).
type Store struct {
	db      *bbolt.DB
	path    string
	keyPath string
	sealer  *seal.Sealer
	log     *slog.Logger
	now     func() time.Time
	// maxGroups is Options.MaxGroups (0: no limit).
	maxGroups int

	leave   func()       // gate.Leave, bound once (enter returns it on every call)
	writers atomic.Int32 // write calls in flight: 1 commits alone, more batch
	noBatch bool         // benchmarks only: never coalesce (what Batch buys)
	group   groupCommit  // coalesces concurrent writes (groupcommit.go)
	gate    gate.Gate    // admits calls until Close
}

var _ store.Store = (*Store)(nil)

// lockedError names the locked file and how long Open waited.
type lockedError struct {
	path   string
	waited time.Duration
}

func (e *lockedError) Error() string {
	return fmt.Sprintf("store: %s is locked by another process (waited %s)", e.path, e.waited)
}

func (e *lockedError) Unwrap() []error { return []error{ErrLocked, berrors.ErrTimeout} }

// Open opens (creating if needed) the bbolt database at path and its data
// key file, upgrades an older schema in one transaction, and refuses a file
// written by a newer version. The database file is created with mode 0600.
func Open(path string, opts Options) (*Store, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultLockTimeout
	}
	if opts.KeyFile == "" {
		opts.KeyFile = path + ".key"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxBatchDelay <= 0 {
		opts.MaxBatchDelay = DefaultMaxBatchDelay
	}
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)

	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: opts.Timeout, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, &lockedError{path: path, waited: opts.Timeout}
		}
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	db.MaxBatchDelay = opts.MaxBatchDelay
	s := &Store{db: db, path: path, keyPath: opts.KeyFile, log: opts.Logger, now: opts.Now, maxGroups: max(opts.MaxGroups, 0)}
	s.leave = s.gate.Leave
	if err := s.init(created); err != nil {
		_ = db.Close()
		return nil, err
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		s.log.Warn("store: database file is readable by group or others", "path", path, "mode", fi.Mode().Perm().String())
	}
	if n, err := s.CountGroups(context.Background()); err == nil && s.maxGroups > 0 && n > s.maxGroups {
		s.log.Warn("store: more enrollment groups than the limit: no new group can be created until some are deleted",
			"path", path, "groups", n, "limit", s.maxGroups)
	}
	s.log.Info("store: opened", "path", path, "schema", SchemaVersion, "created", created)
	return s, nil
}

// init checks the schema version, loads or creates the data key and runs the
// migrations.
func (s *Store) init(created bool) error {
	version, check, err := s.readMeta()
	if err != nil {
		return err
	}
	if version > SchemaVersion {
		return fmt.Errorf("%w: %s has schema version %d, this build supports up to version %d", ErrSchema, s.path, version, SchemaVersion)
	}
	key, err := loadOrCreateKey(s.keyPath, check != nil)
	if err != nil {
		return err
	}
	sealer, err := newSealer(key)
	if err != nil {
		return err
	}
	s.sealer = sealer
	want := seal.KeyCheck(key)
	if check != nil && !seal.EqualCheck(check, want) {
		return fmt.Errorf("%w: %s is not the key of %s", ErrKeyFile, s.keyPath, s.path)
	}
	if version < SchemaVersion || check == nil {
		if err := s.migrate(version, want, created); err != nil {
			return err
		}
	}
	if err := s.voidLeases(); err != nil {
		return err
	}
	if created {
		syncDir(filepath.Dir(s.path))
	}
	return nil
}

// syncDir makes a newly created file's directory entry durable (best effort).
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	_ = d.Sync()
	_ = d.Close()
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// KeyFile returns the data key file's path.
func (s *Store) KeyFile() string { return s.keyPath }

// enter admits one call: it fails on a cancelled ctx or a closed store, and
// otherwise registers the call so that Close waits for it.
func (s *Store) enter(ctx context.Context) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.gate.Enter(); err != nil {
		return nil, err
	}
	return s.leave, nil
}

// Close waits for in-flight calls and closes the file. Later calls, Close
// included, return ErrClosed.
func (s *Store) Close() error {
	if err := s.gate.Close(); err != nil {
		return err
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", s.path, err)
	}
	return nil
}

// Check runs bbolt's consistency check (every page reachable or free, no
// double frees, keys ordered) and also checks the store's own invariants
// (the group index and the expiry index point at existing records, and the
// counters match). Writers wait while it runs. It returns all problems
// joined, or nil.
func (s *Store) Check() error {
	done, err := s.enter(context.Background())
	if err != nil {
		return err
	}
	defer done()
	// bbolt's check reads the freelist, which writers change: run it in a
	// write transaction (writers wait) and roll that back.
	tx, err := s.db.Begin(true)
	if err != nil {
		return fmt.Errorf("store: check %s: %w", s.path, err)
	}
	defer func() { _ = tx.Rollback() }()
	var errs []error
	for e := range tx.Check() {
		errs = append(errs, e)
	}
	errs = append(errs, checkIndexes(tx)...)
	if len(errs) > 0 {
		return fmt.Errorf("store: check %s: %w", s.path, errors.Join(errs...))
	}
	return nil
}
