package api

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/bolt"
)

// backupEnv serves NewBackup over HTTPS on a store holding one enrollment.
func backupEnv(t *testing.T) (*testEnv, string) {
	t.Helper()
	return backupEnvWith(t, nil)
}

// backupEnvWith is backupEnv with the configuration changed by set.
func backupEnvWith(t *testing.T, set func(*Config)) (*testEnv, string) {
	t.Helper()
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "dps.db")
	st, err := bolt.Open(dbPath, bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	env := &testEnv{t: t, st: st, ownerKey: randomBytes(t, 32), readerKey: randomBytes(t, 32), logs: &testkit.LogBuffer{}}
	cfg := Config{
		Store:    st,
		HostName: testHost,
		Policies: []Policy{
			{Name: ownerName, Key: env.ownerKey, Rights: RightAll},
			{Name: readerName, Key: env.readerKey, Rights: RightRead},
		},
		Logger: slog.New(slog.NewJSONHandler(env.logs, nil)),
	}
	if set != nil {
		set(&cfg)
	}
	h, err := NewBackup(cfg)
	if err != nil {
		t.Fatal(err)
	}
	env.srv = httptest.NewTLSServer(h)
	t.Cleanup(env.srv.Close)
	if _, err := st.PutEnrollment(context.Background(), &store.Enrollment{
		RegistrationID: "backed-up",
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
				SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}},
		},
	}, ""); err != nil {
		t.Fatal(err)
	}
	return env, dbPath
}

func getBackup(t *testing.T, env *testEnv, token, query string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, env.srv.URL+wire.BackupPath+query, nil)
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	res, err := env.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, body
}

func TestBackup(t *testing.T) {
	env, dbPath := backupEnv(t)
	res, body := getBackup(t, env, env.ownerToken(), "?api-version="+APIVersion20211001)
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("status %d %q: %s", res.StatusCode, res.Header.Get("Content-Type"), body)
	}
	sum := sha256.Sum256(body)
	if got := res.Trailer.Get(wire.BackupSHA256Trailer); got != hex.EncodeToString(sum[:]) {
		t.Fatalf("sha256 trailer %q", got)
	}
	if got := res.Trailer.Get(wire.BackupSizeTrailer); got != strconv.Itoa(len(body)) {
		t.Fatalf("size trailer %q, body %d bytes", got, len(body))
	}
	// The copy opens with the same data key file and holds the enrollment.
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(copyPath, body, 0o600); err != nil {
		t.Fatal(err)
	}
	cp, err := bolt.Open(copyPath, bolt.Options{Timeout: time.Second, KeyFile: dbPath + ".key"})
	if err != nil {
		t.Fatalf("open the copy: %v", err)
	}
	defer cp.Close()
	e, err := cp.GetEnrollment(context.Background(), "backed-up")
	if err != nil || e.Attestation.SymmetricKey == nil || e.Attestation.SymmetricKey.PrimaryKey != "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0" {
		t.Fatalf("enrollment in the copy: %+v %v", e, err)
	}
	if !strings.Contains(env.logs.String(), `"action":"backup"`) {
		t.Fatalf("no audit line:\n%s", env.logs.String())
	}
}

func TestBackupRefusals(t *testing.T) {
	env, _ := backupEnv(t)
	v := "?api-version=" + APIVersion20211001
	reader := attest.SignSAS(env.readerKey, testHost, time.Now().Add(time.Hour), readerName)
	for _, tc := range []struct {
		name, token, query string
		status             int
	}{
		{"no token", "", v, http.StatusUnauthorized},
		{"read-only policy", reader, v, http.StatusForbidden},
		{"no api-version", env.ownerToken(), "", http.StatusBadRequest},
	} {
		res, body := getBackup(t, env, tc.token, tc.query)
		if res.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d: %s", tc.name, res.StatusCode, tc.status, body)
		}
		if res.Trailer.Get(wire.BackupSHA256Trailer) != "" {
			t.Errorf("%s: refusal carries a backup trailer", tc.name)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, env.srv.URL+wire.BackupPath+v, nil)
	req.Header.Set("Authorization", env.ownerToken())
	res, err := env.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST status %d", res.StatusCode)
	}
	// A closed store: 503 with the DPS error body, no partial file.
	env.st.Close()
	res, body := getBackup(t, env, env.ownerToken(), v)
	var eb wire.Error
	if res.StatusCode != http.StatusServiceUnavailable || json.Unmarshal(body, &eb) != nil || eb.ErrorCode != codeUnavailable {
		t.Fatalf("closed store: %d %s", res.StatusCode, body)
	}
}

func TestHealthEndpoints(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), "h.db"), bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(HealthPath, Healthz())
	var listening atomic.Bool
	listening.Store(true)
	mux.Handle(ReadyPath, Readyz(time.Second, StoreCheck(st), Check{Name: "listeners", Fn: func(context.Context) error {
		if !listening.Load() {
			return errors.New("mqtts listener is not running")
		}
		return nil
	}}))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	get := func(path string) (int, string) {
		res, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, body := get(HealthPath); code != 200 || body != "ok\n" {
		t.Fatalf("healthz %d %q", code, body)
	}
	code, body := get(ReadyPath)
	var rs ReadyStatus
	if code != 200 || json.Unmarshal([]byte(body), &rs) != nil || rs.Status != "ready" || rs.Checks["store"] != "ok" || rs.Checks["listeners"] != "ok" {
		t.Fatalf("readyz %d %s", code, body)
	}
	listening.Store(false)
	if code, body := get(ReadyPath); code != 503 || !strings.Contains(body, "mqtts listener is not running") {
		t.Fatalf("readyz without listeners %d %s", code, body)
	}
	listening.Store(true)
	st.Close()
	code, body = get(ReadyPath)
	if code != 503 || json.Unmarshal([]byte(body), &rs) != nil || rs.Checks["store"] == "ok" || rs.Checks["listeners"] != "ok" {
		t.Fatalf("readyz with a closed store %d %s", code, body)
	}
	if code, _ := get(HealthPath); code != 200 {
		t.Fatalf("healthz with a closed store %d", code)
	}
}

// TestBackupStalledClient: the store is copied to BackupDir before it is
// sent (the copy is never visible there, and nothing is left behind), a
// second backup is refused while one runs, and a client that stops reading
// is cut off after BackupIdleTimeout, which frees the way for the next.
func TestBackupStalledClient(t *testing.T) {
	dir := t.TempDir()
	env, _ := backupEnvWith(t, func(c *Config) { c.BackupDir = dir; c.BackupIdleTimeout = 3 * time.Second })
	// About 13 MiB, more than the socket buffers hold.
	twin := json.RawMessage(`{"tags":{"pad":"` + strings.Repeat("x", 1024) + `"}}`)
	es := make([]*store.Enrollment, 10000)
	for i := range es {
		es[i] = &store.Enrollment{RegistrationID: fmt.Sprintf("fill-%05d", i), EnrollmentSettings: store.EnrollmentSettings{InitialTwin: twin,
			Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}}}}
	}
	if _, err := env.st.PutEnrollments(t.Context(), es); err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", env.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.(*net.TCPConn).SetReadBuffer(256 << 10)
	conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	fmt.Fprintf(conn, "GET %s?api-version=2021-10-01 HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n", wire.BackupPath, env.ownerToken())
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("backup: %v %+v", err, res)
	}
	if _, err := io.CopyN(io.Discard, res.Body, 1024); err != nil {
		t.Fatal(err)
	}
	// Running: the next one waits its turn, and the copy is not in the directory.
	second, body := getBackup(t, env, env.ownerToken(), "?api-version=2021-10-01")
	var eb wire.Error
	if second.StatusCode != http.StatusServiceUnavailable || json.Unmarshal(body, &eb) != nil || eb.ErrorCode != codeUnavailable {
		t.Fatalf("second backup while one runs: %d %s", second.StatusCode, body)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("the local copy is visible: %v", ents)
	}
	// The stalled client is cut off.
	testkit.AwaitWithin(t, 30*time.Second, "the client that stopped reading cut off", func() bool {
		return strings.Contains(env.logs.String(), "backup cut short")
	})
	if _, err := io.Copy(io.Discard, res.Body); err == nil && res.Trailer.Get(wire.BackupSHA256Trailer) != "" {
		t.Fatal("a cut transfer ended with trailers")
	}
	// The next backup runs, whole.
	third, data := getBackup(t, env, env.ownerToken(), "?api-version=2021-10-01")
	sum := sha256.Sum256(data)
	if third.StatusCode != http.StatusOK || third.Trailer.Get(wire.BackupSHA256Trailer) != hex.EncodeToString(sum[:]) {
		t.Fatalf("backup after the cut: %d, %d bytes", third.StatusCode, len(data))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
}
