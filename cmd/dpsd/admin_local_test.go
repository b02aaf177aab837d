package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/internal/testkit"
)

// clearAdminEnv unsets every variable the admin commands and dpsd's
// configuration read, so that the test alone decides.
func clearAdminEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{adminConnEnv, adminEndpointEnv, adminCAFileEnv, "DPSD_CONFIG", "DPSD_DATA_DIR", "DPSD_API_ADDR", "DPSD_API_HOST_NAME", "DPSD_TLS_CERT", "DPSD_TLS_KEY"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

// admin runs one dpsd command line in-process.
func admin(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestAdminFindsLocalServer: with no connection string, endpoint or CA
// given, the admin commands use the data directory's owner connection
// string and CA, and the API address of dpsd's configuration (flags, DPSD_*
// variables or the config file), as dpsd serve on this machine does.
func TestAdminFindsLocalServer(t *testing.T) {
	p := serveInProcess(t, "127.0.0.1:0")
	clearAdminEnv(t)
	_, port, err := net.SplitHostPort(p.API)
	if err != nil {
		t.Fatal(err)
	}
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{3}, 32))

	// The API address and data directory from the environment; ":port"
	// (all addresses) is reached on 127.0.0.1.
	t.Setenv("DPSD_API_ADDR", ":"+port)
	t.Setenv("DPSD_DATA_DIR", p.dataDir)
	if code, out, errs := admin(t, "enrollment", "add", "local-1", "--symmetric-key", key); code != 0 {
		t.Fatalf("enrollment add from the environment: %d %s %s", code, out, errs)
	}

	// From a config file, and --data-dir.
	os.Unsetenv("DPSD_API_ADDR")
	os.Unsetenv("DPSD_DATA_DIR")
	file := filepath.Join(t.TempDir(), "dpsd.json")
	if err := os.WriteFile(file, []byte(`{"api-addr": "127.0.0.1:`+port+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := admin(t, "enrollment", "list", "--config", file, "--data-dir", p.dataDir)
	if code != 0 || !strings.Contains(out, "local-1") {
		t.Fatalf("enrollment list from the config file: %d %s %s", code, out, errs)
	}
	t.Setenv("DPSD_CONFIG", file)
	if code, out, errs := admin(t, "group", "list", "--data-dir", p.dataDir); code != 0 {
		t.Fatalf("group list with DPSD_CONFIG: %d %s %s", code, out, errs)
	}

	// No data directory here: the error says what to give.
	code, _, errs = admin(t, "enrollment", "list", "--data-dir", filepath.Join(t.TempDir(), "none"))
	if code != 1 || !strings.Contains(errs, adminConnEnv) || !strings.Contains(errs, "--data-dir") ||
		!strings.Contains(errs, datadir.ConnectionStringFile) {
		t.Fatalf("no data directory: %d %s", code, errs)
	}
}

// TestAdminErrorHints: the first-use mistakes are answered with the fix:
// the cloud's port 443 (dpsd's API is on 8443), a CA that was not given,
// and http://.
func TestAdminErrorHints(t *testing.T) {
	p := serveInProcess(t, "127.0.0.1:0")
	clearAdminEnv(t)
	owner, err := os.ReadFile(filepath.Join(p.dataDir, datadir.ConnectionStringFile))
	if err != nil {
		t.Fatal(err)
	}
	cs := strings.TrimSpace(string(owner))

	// A connection string alone: https://{HostName}, port 443, where
	// nothing listens (127.0.0.3: no test binds it).
	code, _, errs := admin(t, "enrollment", "list", "--connection-string", strings.Replace(cs, "HostName=localhost", "HostName=127.0.0.3", 1))
	if code != 1 || !strings.Contains(errs, ":8443 by default") || !strings.Contains(errs, adminEndpointEnv) ||
		!strings.Contains(errs, "https://127.0.0.3:8443") {
		t.Errorf("refused on 443: %d %s", code, errs)
	}

	// Another port where nothing listens.
	closed := testkit.FreeAddr(t)
	code, _, errs = admin(t, "enrollment", "list", "--connection-string", cs, "--endpoint", "https://"+closed)
	if code != 1 || !strings.Contains(errs, "nothing listens on "+closed) || strings.Contains(errs, "8443 by default") {
		t.Errorf("refused on another port: %d %s", code, errs)
	}

	// The right endpoint without the CA.
	code, _, errs = admin(t, "enrollment", "list", "--connection-string", cs, "--endpoint", "https://"+p.API)
	if code != 1 || !strings.Contains(errs, "--ca-file") || !strings.Contains(errs, adminCAFileEnv) {
		t.Errorf("unknown authority: %d %s", code, errs)
	}
	// ... and with it.
	if code, _, errs := admin(t, "enrollment", "list", "--connection-string", cs, "--endpoint", "https://"+p.API, "--ca-file", p.CACert); code != 0 {
		t.Errorf("with the CA: %d %s", code, errs)
	}

	// http:// is refused before anything is sent.
	t.Setenv(adminEndpointEnv, "http://"+p.API)
	code, _, errs = admin(t, "enrollment", "list", "--connection-string", cs)
	if code != 1 || !strings.Contains(errs, "HTTPS only") || !strings.Contains(errs, "https://"+p.API) {
		t.Errorf("http endpoint: %d %s", code, errs)
	}
}
