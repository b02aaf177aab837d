package main

// dpsd backup FILE

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/store/bolt"
	etcdstore "github.com/tpmdps/dpsd/store/etcd"
)

// runBackup is `dpsd backup FILE`: a consistent hot copy of the store
// through the service API, written to FILE atomically with mode 0600.
func runBackup(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := newAdminCmd("backup", stdout, stderr)
	pos, err := c.parse(args, "FILE  (a hot copy of the store, through the service API; see docs/operations.md to restore)", 1, 1)
	if err != nil {
		return c.exit(err)
	}
	n, sum, err := backupTo(ctx, &c.opts, pos[0])
	if err != nil {
		return c.exit(err)
	}
	fmt.Fprintf(stdout, "wrote %d bytes to %s (sha256 %s)\n", n, pos[0], sum)
	return adminExitOK
}

// verifyBackupFile checks a downloaded backup by its engine: an etcd
// store's stream (its own SHA-256 trailer), or a bbolt file.
func verifyBackupFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, len(etcdstore.BackupMagic))
	if n, _ := io.ReadFull(f, head); n == len(head) && string(head) == etcdstore.BackupMagic {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		_, _, err := etcdstore.ReadBackup(f, nil)
		return err
	}
	return bolt.VerifyCopy(path)
}

// backupTo downloads the backup into a temporary file beside path, checks
// it against the trailers and that it is a readable copy of a store
// (bolt.VerifyCopy), and renames it to path.
func backupTo(ctx context.Context, o *adminOpts, path string) (int64, string, error) {
	cl, err := o.client()
	if err != nil {
		return 0, "", err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return 0, "", fmt.Errorf("creating the backup file: %w", err)
	}
	tmpName := tmp.Name()
	keep := false
	defer func() {
		if !keep {
			_ = tmp.Close()
			_ = os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return 0, "", fmt.Errorf("backup file mode: %w", err)
	}
	h := sha256.New()
	// Backup checks the size and SHA-256 against the service's trailers.
	n, err := cl.Backup(ctx, io.MultiWriter(tmp, h))
	if err != nil {
		return 0, "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := tmp.Sync(); err != nil {
		return 0, "", fmt.Errorf("syncing the backup file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return 0, "", fmt.Errorf("closing the backup file: %w", err)
	}
	if err := verifyBackupFile(tmpName); err != nil {
		return 0, "", fmt.Errorf("%w: %w", apiclient.ErrBackupIncomplete, err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return 0, "", fmt.Errorf("renaming the backup into place: %w", err)
	}
	keep = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return n, sum, nil
}
