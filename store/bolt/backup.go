package bolt

// Hot backups, and the check of a copy before it is kept.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/tpmdps/dpsd/store"
)

// Backup writes a consistent snapshot of the whole file to w (tx.WriteTo in
// a read transaction: writers are not blocked). Restoring is opening the
// copy with the same key file. Cancelling ctx stops the copy at the next write.
func (s *Store) Backup(ctx context.Context, w io.Writer) (int64, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: backup: %w", err)
	}
	defer done()
	var n int64
	err = s.db.View(func(tx *bbolt.Tx) error {
		var err error
		n, err = tx.WriteTo(ctxWriter{ctx: ctx, w: w})
		return err
	})
	if err != nil {
		return n, fmt.Errorf("store: backup %s: %w", s.path, err)
	}
	return n, nil
}

// ctxWriter fails writes once ctx is done.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// VerifyCopy checks that the file at path is a readable copy of a store (what
// Backup wrote, or the database file itself) before it is kept in place of
// an older one: bbolt opens it read-only, which checks its meta pages; the
// file must be as long as its pages need, and hold the meta bucket with a
// schema version and a key check. It
// neither upgrades nor writes the file and needs no key file; errors wrap
// store.ErrCorrupt. A file that another process has open for writing waits
// up to DefaultLockTimeout and fails with ErrLocked.
func VerifyCopy(path string) error {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: DefaultLockTimeout})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return &lockedError{path: path, waited: DefaultLockTimeout}
		}
		return fmt.Errorf("%w: %s is not a readable bbolt file: %w", store.ErrCorrupt, path, err)
	}
	defer db.Close()
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("store: verify %s: %w", path, err)
	}
	return db.View(func(tx *bbolt.Tx) error {
		// The meta page names the pages in use: a cut copy lacks some.
		if fi.Size() < tx.Size() {
			return fmt.Errorf("%w: %s is %d bytes, its pages need %d (a cut copy)", store.ErrCorrupt, path, fi.Size(), tx.Size())
		}
		m := tx.Bucket([]byte(bktMeta))
		if m == nil {
			return fmt.Errorf("%w: %s is a bbolt file but not a store (no %s bucket)", store.ErrCorrupt, path, bktMeta)
		}
		if v := m.Get([]byte(metaVersion)); len(v) != 8 || binary.BigEndian.Uint64(v) == 0 {
			return fmt.Errorf("%w: %s has no schema version", store.ErrCorrupt, path)
		}
		if m.Get([]byte(metaKeyCheck)) == nil {
			return fmt.Errorf("%w: %s has no key check", store.ErrCorrupt, path)
		}
		return nil
	})
}
