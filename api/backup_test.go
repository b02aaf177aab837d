package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// backupEnv serves NewBackup over HTTPS on a store holding one enrollment.
func backupEnv(t *testing.T) (*testEnv, string) {
	t.Helper()
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "dps.db")
	st, err := store.OpenBolt(dbPath, store.BoltOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	env := &testEnv{t: t, st: st, ownerKey: randomBytes(t, 32), readerKey: randomBytes(t, 32), logs: &lockedBuffer{}}
	h, err := NewBackup(Config{
		Store:    st,
		HostName: testHost,
		Policies: []Policy{
			{Name: ownerName, Key: env.ownerKey, Rights: RightAll},
			{Name: readerName, Key: env.readerKey, Rights: RightRead},
		},
		Logger: slog.New(slog.NewJSONHandler(env.logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	env.srv = httptest.NewTLSServer(h)
	t.Cleanup(env.srv.Close)
	if _, err := st.PutEnrollment(context.Background(), &store.Enrollment{
		RegistrationID: "backed-up",
		Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
			SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}},
	}, ""); err != nil {
		t.Fatal(err)
	}
	return env, dbPath
}

func getBackup(t *testing.T, env *testEnv, token, query string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, env.srv.URL+BackupPath+query, nil)
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
	if got := res.Trailer.Get(BackupSHA256Trailer); got != hex.EncodeToString(sum[:]) {
		t.Fatalf("sha256 trailer %q", got)
	}
	if got := res.Trailer.Get(BackupSizeTrailer); got != strconv.Itoa(len(body)) {
		t.Fatalf("size trailer %q, body %d bytes", got, len(body))
	}
	// The copy opens with the same data key file and holds the enrollment.
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(copyPath, body, 0o600); err != nil {
		t.Fatal(err)
	}
	cp, err := store.OpenBolt(copyPath, store.BoltOptions{Timeout: time.Second, KeyFile: dbPath + ".key"})
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
		if res.Trailer.Get(BackupSHA256Trailer) != "" {
			t.Errorf("%s: refusal carries a backup trailer", tc.name)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, env.srv.URL+BackupPath+v, nil)
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
	var eb Error
	if res.StatusCode != http.StatusServiceUnavailable || json.Unmarshal(body, &eb) != nil || eb.ErrorCode != codeUnavailable {
		t.Fatalf("closed store: %d %s", res.StatusCode, body)
	}
}

func TestHealthEndpoints(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "h.db"), store.BoltOptions{Timeout: 5 * time.Second})
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
