package apiclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/tpmdps/dpsd/api/wire"
)

// ErrBackupIncomplete means a backup stream broke off or ended without size
// and SHA-256 trailers matching the bytes received: the copy is cut and must
// be discarded.
var ErrBackupIncomplete = errors.New("apiclient: backup incomplete")

// Backup streams a consistent hot copy of the service's store (GET
// wire.BackupPath, a dpsd extension that needs the write right) into w and
// returns the number of bytes written. The whole copy passes through w
// before the service's trailers arrive, so on an error w may hold a partial
// copy: write to a temporary file and keep it only when Backup returns nil.
// A stream that breaks off or whose size or SHA-256 differ from the
// trailers gives an error wrapping ErrBackupIncomplete; an error answer
// gives an *APIError. The client's HTTP timeout bounds the whole download.
func (c *Client) Backup(ctx context.Context, w io.Writer) (int64, error) {
	u := c.base.String() + wire.BackupPath + "?" + url.Values{"api-version": {c.apiVersion}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, fmt.Errorf("apiclient: building GET %s: %w", wire.BackupPath, err)
	}
	req.Header.Set("Authorization", c.token())
	res, err := c.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("apiclient: GET %s: %w", wire.BackupPath, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
		ae := errorFromResponse(res, b)
		if ae.Message == "" {
			ae.Message = strings.TrimSpace(string(b)) // not a DPS error body, e.g. a proxy's
		}
		return 0, ae
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), res.Body)
	if err != nil {
		return n, fmt.Errorf("%w: after %d bytes: %w", ErrBackupIncomplete, n, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	wantSize, wantSum := res.Trailer.Get(wire.BackupSizeTrailer), res.Trailer.Get(wire.BackupSHA256Trailer)
	if wantSize != strconv.FormatInt(n, 10) || !strings.EqualFold(wantSum, sum) {
		return n, fmt.Errorf("%w: received %d bytes (sha256 %s), the service sent %q bytes (sha256 %q)",
			ErrBackupIncomplete, n, sum, wantSize, wantSum)
	}
	return n, nil
}
