package main

// dpsd backup FILE

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/api"
	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/attest"
)

// errBackupIncomplete: the backup stream ended without matching trailers.
var errBackupIncomplete = errors.New("backup incomplete")

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

// backupTo downloads the backup into a temporary file beside path, checks
// it against the trailers and that bbolt opens it, and renames it to path.
func backupTo(ctx context.Context, o *adminOpts, path string) (int64, string, error) {
	res, err := backupRequest(ctx, o)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()

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
	n, err := io.Copy(io.MultiWriter(tmp, h), res.Body)
	if err != nil {
		return 0, "", fmt.Errorf("%w: after %d bytes: %w", errBackupIncomplete, n, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	wantSize, wantSum := res.Trailer.Get(api.BackupSizeTrailer), res.Trailer.Get(api.BackupSHA256Trailer)
	if wantSize != strconv.FormatInt(n, 10) || !strings.EqualFold(wantSum, sum) {
		return 0, "", fmt.Errorf("%w: received %d bytes (sha256 %s), the service sent %q bytes (sha256 %q)",
			errBackupIncomplete, n, sum, wantSize, wantSum)
	}
	if err := tmp.Sync(); err != nil {
		return 0, "", fmt.Errorf("syncing the backup file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return 0, "", fmt.Errorf("closing the backup file: %w", err)
	}
	if err := checkBolt(tmpName); err != nil {
		return 0, "", err
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

// checkBolt opens a downloaded copy read-only: bbolt checks its meta pages.
func checkBolt(path string) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("%w: the copy is not a readable bbolt file: %w", errBackupIncomplete, err)
	}
	return db.Close()
}

// backupRequest sends GET /backup signed with the connection string's policy.
func backupRequest(ctx context.Context, o *adminOpts) (*http.Response, error) {
	csText := o.connString
	if csText == "" {
		csText = os.Getenv(adminConnEnv)
	}
	if csText == "" {
		return nil, fmt.Errorf("no connection string: pass --connection-string or set $%s", adminConnEnv)
	}
	cs, err := apiclient.ParseConnectionString(csText)
	if err != nil {
		return nil, err
	}
	base := o.endpoint
	if base == "" {
		base = "https://" + cs.HostName
	}
	u, err := url.Parse(strings.TrimRight(base, "/"))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("endpoint %q is not an http(s) URL", base)
	}
	u.Path += api.BackupPath
	u.RawQuery = url.Values{"api-version": {apiclient.DefaultAPIVersion}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("building the backup request: %w", err)
	}
	req.Header.Set("Authorization", attest.SignSAS(cs.Key, cs.HostName, time.Now().Add(time.Hour), cs.KeyName))
	hc, err := backupHTTPClient(o)
	if err != nil {
		return nil, err
	}
	res, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("backup request: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		defer res.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
		var ae api.Error
		if json.Unmarshal(b, &ae) == nil && ae.ErrorCode != 0 {
			return nil, &apiclient.APIError{Status: res.StatusCode, ErrorCode: ae.ErrorCode, Message: ae.Message, TrackingID: ae.TrackingID}
		}
		return nil, &apiclient.APIError{Status: res.StatusCode, Message: strings.TrimSpace(string(b)), TrackingID: res.Header.Get("x-ms-request-id")}
	}
	return res, nil
}

// backupHTTPClient is the admin commands' client: --ca-file trusted, the
// timeout bounding the whole download.
func backupHTTPClient(o *adminOpts) (*http.Client, error) {
	hc := &http.Client{Timeout: o.timeout}
	if o.caFile == "" {
		return hc, nil
	}
	pemBytes, err := os.ReadFile(o.caFile)
	if err != nil {
		return nil, fmt.Errorf("reading --ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("--ca-file %s holds no PEM certificate", o.caFile)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	hc.Transport = tr
	return hc, nil
}
