package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/store"
)

// TestAdminHubCommands: dpsd hub add (connection string from a file, from
// the environment, a webhook hub), show, list and remove, through the
// service API; no output shows a key or secret; a second add without
// --replace is refused; a reader can list but not add.
func TestAdminHubCommands(t *testing.T) {
	e := newAdminEnv(t)
	const key = "aHViLXNlY3JldC1rZXktMDEyMzQ1Njc4OWFiY2RlZg=="
	csFile := filepath.Join(e.dir, "hub-cs")
	if err := os.WriteFile(csFile, []byte("HostName=hub-a.azure-devices.net;SharedAccessKeyName=registryReadWrite;SharedAccessKey="+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := e.must(runHubCmd, "add", "hub-a.azure-devices.net", "--hub-connection-string-file", csFile, "--weight", "300")
	if !strings.Contains(out, "iothub (registry REST API)") || !strings.Contains(out, "300") || strings.Contains(out, key) {
		t.Fatalf("add: %s", out)
	}
	h, err := e.st.GetLinkedHub(t.Context(), "hub-a.azure-devices.net")
	if err != nil || !strings.HasSuffix(h.ConnectionString, key) || h.AllocationWeight != 300 {
		t.Fatalf("stored: %+v %v", h, err)
	}
	if code, _, stderr := e.run(runHubCmd, "add", "hub-a.azure-devices.net", "--hub-connection-string-file", csFile); code != 1 || !strings.Contains(stderr, "already linked") {
		t.Fatalf("second add: %d %s", code, stderr)
	}
	t.Setenv(adminHubSecretEnv, "HostName=hub-b.azure-devices.net;SharedAccessKeyName=p;SharedAccessKey="+key)
	e.must(runHubCmd, "add", "hub-b.azure-devices.net", "--no-allocation")
	t.Setenv(adminHubSecretEnv, "")
	secret := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	secretFile := filepath.Join(e.dir, "wh-secret")
	if err := os.WriteFile(secretFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	out = e.must(runHubCmd, "add", "platform.local", "--webhook-url", "https://platform.local/dps", "--webhook-secret-file", secretFile)
	if !strings.Contains(out, "webhook") || strings.Contains(out, secret) {
		t.Fatalf("webhook add: %s", out)
	}
	e.must(runHubCmd, "add", "alloc-only.example.net")
	code, list, _ := e.runAsReader(runHubCmd, "list")
	if code != 0 {
		t.Fatalf("reader list: %d", code)
	}
	for _, want := range []string{"hub-a.azure-devices.net", "hub-b.azure-devices.net", "platform.local", "none (allocation only)"} {
		if !strings.Contains(list, want) {
			t.Fatalf("list lacks %q:\n%s", want, list)
		}
	}
	if strings.Contains(list, key) || strings.Contains(list, secret) {
		t.Fatalf("list shows a secret:\n%s", list)
	}
	var hubs []store.LinkedHub
	if err := json.Unmarshal([]byte(e.must(runHubCmd, "list", "--json")), &hubs); err != nil || len(hubs) != 4 || hubs[2].Allocates() {
		t.Fatalf("list --json: %+v %v", hubs, err)
	}
	if code, _, _ := e.runAsReader(runHubCmd, "add", "x.example.net"); code != 1 {
		t.Fatalf("a reader added a hub: %d", code)
	}
	if out := e.must(runHubCmd, "show", "HUB-A.azure-devices.net"); !strings.Contains(out, "SharedAccessKeyName=registryReadWrite (key not shown)") {
		t.Fatalf("show: %s", out)
	}
	if code, _, stderr := e.run(runHubCmd, "add", "bad.example.net", "--hub-connection-string", "HostName=other;SharedAccessKeyName=p;SharedAccessKey="+key); code != 1 || !strings.Contains(stderr, "is not the hub's name") {
		t.Fatalf("mismatched host: %d %s", code, stderr)
	}
	e.must(runHubCmd, "remove", "hub-b.azure-devices.net")
	if _, err := e.st.GetLinkedHub(t.Context(), "hub-b.azure-devices.net"); err == nil {
		t.Fatal("not removed")
	}
	if code, _, _ := e.run(runHubCmd, "bogus"); code != 2 {
		t.Fatalf("unknown subcommand: %d", code)
	}
}
