package api

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/internal/trackid"
	"github.com/tpmdps/dpsd/store"
)

// backupChunk is how much of the copy one write sends.
const backupChunk = 64 << 10

// NewBackup returns the handler of GET /backup?api-version=...: a consistent
// hot copy of the whole store (store.Store.Backup, for the bbolt store the
// database file itself), sent as application/octet-stream while the service
// keeps running. Secrets in the copy stay encrypted with the data key file,
// which is not part of it. The token's policy needs the write right, since a
// backup holds every enrollment. The request leaves an audit line like every
// change.
//
// The store's snapshot is first copied to a file in Config.BackupDir (at
// disk speed; on Unix it is unlinked at once and vanishes with its last
// descriptor) and only then sent, so that the snapshot's read transaction
// never lasts as long as a slow or stalled client: in bbolt a long read
// transaction blocks the writer that must grow the file, and every reader
// behind it. A client that stops reading for Config.BackupIdleTimeout is cut
// off. One backup runs at a time; another is refused with 503 meanwhile.
func NewBackup(cfg Config) (http.Handler, error) {
	h, err := New(cfg)
	if err != nil {
		return nil, err
	}
	return &backupHandler{h: h.(*handler), busy: make(chan struct{}, 1)}, nil
}

// backupHandler serves wire.BackupPath.
type backupHandler struct {
	h    *handler
	busy chan struct{} // holds a token while a backup runs
}

// ServeHTTP authorizes the request, copies the store to a local file and
// sends the copy with its trailers.
func (b *backupHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := b.h
	rq := &request{trackingID: trackid.New(), method: r.Method, path: r.URL.Path}
	w.Header().Set("x-ms-request-id", rq.trackingID)
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		h.refuse(w, r, rq, errorf(codeMethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path))
		return
	}
	if !h.admit(w, r, rq, RightWrite) {
		return
	}
	select {
	case b.busy <- struct{}{}:
	default:
		h.writeError(w, rq, errorf(codeUnavailable, "another backup is running: retry when it has finished"))
		return
	}
	release := sync.OnceFunc(func() { <-b.busy })
	defer release()
	// The copy takes as long as the store is large: the server's write
	// timeout does not apply; send sets a deadline per chunk.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	f, err := b.snapshot(r, rq)
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	closeCopy := sync.OnceFunc(f.close)
	defer closeCopy()

	hdr := w.Header()
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Content-Disposition", `attachment; filename="dpsd.db"`)
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Trailer", wire.BackupSizeTrailer+", "+wire.BackupSHA256Trailer)
	sum := sha256.New()
	n, err := b.send(w, io.TeeReader(f.File, sum))
	if err != nil {
		// Done with this backup before saying so: once the log line is
		// out, the next backup finds the slot free and no copy left.
		closeCopy()
		release()
		h.log.Error("backup cut short", "trackingId", rq.trackingID, "sent", n, "err", err)
		panic(http.ErrAbortHandler) // the client sees a broken stream, without trailers
	}
	hdr.Set(wire.BackupSizeTrailer, strconv.FormatInt(n, 10))
	hdr.Set(wire.BackupSHA256Trailer, hex.EncodeToString(sum.Sum(nil)))
	h.audit(rq, "backup", "store", "", "")
}

// snapshotFile is the local copy of a backup.
type snapshotFile struct {
	*os.File
	unlinked bool // removed already (Unix); else removed by close
}

// close closes the copy and removes it.
func (s *snapshotFile) close() {
	name := s.Name()
	_ = s.File.Close()
	if !s.unlinked {
		_ = os.Remove(name)
	}
}

// snapshot copies the store into a new file (mode 0600) in BackupDir and
// rewinds it. Its errors are answers.
func (b *backupHandler) snapshot(r *http.Request, rq *request) (*snapshotFile, error) {
	f, err := os.CreateTemp(b.h.cfg.BackupDir, "dpsd-backup-*.tmp")
	if err != nil {
		return nil, &apiError{code: codeInternal, msg: "backup failed", err: fmt.Errorf("creating the local copy: %w", err)}
	}
	s := &snapshotFile{File: f}
	// On Unix the open file outlives its name: nothing is left behind even
	// if the process dies during the transfer.
	s.unlinked = os.Remove(f.Name()) == nil
	start := time.Now()
	n, err := b.h.store.Backup(r.Context(), f)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		s.close()
		code := codeInternal
		if errors.Is(err, store.ErrClosed) {
			code = codeUnavailable
		}
		return nil, &apiError{code: code, msg: "backup failed", err: err}
	}
	b.h.log.Debug("backup copied", "trackingId", rq.trackingID, "bytes", n, "took", time.Since(start))
	return s, nil
}

// send writes src to the client chunk by chunk, each write bounded by the
// idle timeout, and returns the number of bytes sent.
func (b *backupHandler) send(w http.ResponseWriter, src io.Reader) (int64, error) {
	rc := http.NewResponseController(w)
	buf := make([]byte, backupChunk)
	var n int64
	for {
		k, rerr := src.Read(buf)
		if k > 0 {
			// ErrNotSupported (a writer without deadlines) leaves the server's own.
			_ = rc.SetWriteDeadline(time.Now().Add(b.h.cfg.BackupIdleTimeout))
			m, werr := w.Write(buf[:k])
			n += int64(m)
			if werr != nil {
				return n, fmt.Errorf("sending the backup: %w", werr)
			}
		}
		switch {
		case rerr == io.EOF:
			return n, nil
		case rerr != nil:
			return n, fmt.Errorf("reading the local copy: %w", rerr)
		}
	}
}
