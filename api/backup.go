package api

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/tpmdps/dpsd/internal/trackid"
	"github.com/tpmdps/dpsd/store"
)

// BackupPath is the path of the hot backup endpoint (not part of the DPS API).
const BackupPath = "/backup"

// Trailers of a backup answer: a client that does not receive both, or whose
// copy differs from them, holds a cut copy and must discard it.
const (
	// BackupSizeTrailer carries the number of bytes sent.
	BackupSizeTrailer = "X-Dpsd-Backup-Size"
	// BackupSHA256Trailer carries the hex SHA-256 of the bytes sent.
	BackupSHA256Trailer = "X-Dpsd-Backup-Sha256"
)

// NewBackup returns the handler of GET /backup?api-version=...: a consistent
// hot copy of the whole store (store.Store.Backup, for the bbolt store the
// database file itself), streamed as application/octet-stream while the
// service keeps running. Secrets in the copy stay encrypted with the data
// key file, which is not part of it. The token's policy needs the write
// right, since a backup holds every enrollment. The request leaves an audit
// line like every change.
func NewBackup(cfg Config) (http.Handler, error) {
	h, err := New(cfg)
	if err != nil {
		return nil, err
	}
	return &backupHandler{h: h.(*handler)}, nil
}

// backupHandler serves BackupPath.
type backupHandler struct{ h *handler }

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ServeHTTP authorizes the request and streams the backup with its trailers.
func (b *backupHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := b.h
	rq := &request{trackingID: trackid.New(), method: r.Method, path: r.URL.Path}
	w.Header().Set("x-ms-request-id", rq.trackingID)
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		h.writeError(w, rq, errorf(codeMethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path))
		return
	}
	if !h.admit(w, r, rq, RightWrite) {
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Content-Disposition", `attachment; filename="dpsd.db"`)
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Trailer", BackupSizeTrailer+", "+BackupSHA256Trailer)
	sum := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(w, sum)}
	_, err := h.store.Backup(r.Context(), cw)
	if err != nil {
		if cw.n == 0 {
			code := codeInternal
			if errors.Is(err, store.ErrClosed) {
				code = codeUnavailable
			}
			hdr.Del("Trailer")
			hdr.Del("Content-Disposition")
			h.writeError(w, rq, &apiError{code: code, msg: "backup failed", err: err})
			return
		}
		h.log.Error("backup cut short", "trackingId", rq.trackingID, "sent", cw.n, "err", err)
		panic(http.ErrAbortHandler) // the client sees a broken stream, without trailers
	}
	hdr.Set(BackupSizeTrailer, strconv.FormatInt(cw.n, 10))
	hdr.Set(BackupSHA256Trailer, hex.EncodeToString(sum.Sum(nil)))
	h.audit(rq, "backup", "store", "", "")
}
