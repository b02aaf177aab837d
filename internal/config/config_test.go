package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/issuer"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestDefaults(t *testing.T) {
	c, err := Load("serve", "", nil, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "data" || c.MQTTAddr != "127.0.0.1:1883" || c.MQTTSAddr != ":8883" || c.WSSAddr != "" {
		t.Fatalf("defaults %+v", c)
	}
	if c.ChallengeLifetime != 10*time.Minute || c.LogLevel != slog.LevelInfo || c.LogFormat != "text" {
		t.Fatalf("defaults %+v", c)
	}
	if strings.Join(c.TLSNames, ",") != "localhost,127.0.0.1" || len(c.Hubs) != 1 {
		t.Fatalf("defaults %+v", c)
	}
	if c.MaxGroups != 1000 || c.MetricsAddr != "" {
		t.Fatalf("defaults: max-groups %d, metrics-addr %q", c.MaxGroups, c.MetricsAddr)
	}
	if c, err := Load("serve", "", []string{"-max-groups", "-1", "-metrics-addr", "127.0.0.1:9090"}, env(nil), &bytes.Buffer{}); err != nil || c.MaxGroups != -1 || c.MetricsAddr != "127.0.0.1:9090" {
		t.Fatalf("max-groups -1, metrics-addr: %+v, %v", c, err)
	}
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "dpsd.json")
	os.WriteFile(file, []byte(`{"data-dir": "/from/file", "id-scope": "0neFILE", "hubs": ["a.example", "b.example"],
		"challenge-lifetime": "5m", "conns-per-address": 7, "log-level": "debug", "mqtt-addr": "127.0.0.1:11883"}`), 0o600)
	e := map[string]string{
		"DPSD_CONFIG":             file,
		"DPSD_ID_SCOPE":           "0neENV",
		"DPSD_CHALLENGE_LIFETIME": "6m",
		"DPSD_MQTT_ADDR":          "", // set but empty: listener off
	}
	c, err := Load("serve", "", []string{"-challenge-lifetime", "7m", "--log-format=json"}, env(e), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/from/file" {
		t.Errorf("file must beat defaults: %q", c.DataDir)
	}
	if c.IDScope != "0neENV" {
		t.Errorf("env must beat file: %q", c.IDScope)
	}
	if c.ChallengeLifetime != 7*time.Minute {
		t.Errorf("flag must beat env: %v", c.ChallengeLifetime)
	}
	if c.MQTTAddr != "" {
		t.Errorf("empty env value must apply: %q", c.MQTTAddr)
	}
	if strings.Join(c.Hubs, ",") != "a.example,b.example" || c.ConnsPerAddress != 7 || c.LogLevel != slog.LevelDebug || c.LogFormat != "json" {
		t.Errorf("file values %+v", c)
	}
	if c.ConfigFile != file {
		t.Errorf("config file %q", c.ConfigFile)
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"no-such-key": 1}`), 0o600)
	cases := []struct {
		args []string
		env  map[string]string
	}{
		{[]string{"-challenge-lifetime", "soon"}, nil},
		{[]string{"-log-format", "xml"}, nil},
		{[]string{"-conns-per-address", "many"}, nil},
		{nil, map[string]string{"DPSD_LOG_LEVEL": "loud"}},
		{[]string{"-config", bad}, nil},
		{[]string{"-tls-cert", "x.pem"}, nil},
		{[]string{"-mqtt-addr=", "-mqtts-addr="}, nil},
		{[]string{"stray"}, nil},
		{[]string{"-max-groups", "0"}, nil},
		{nil, map[string]string{"DPSD_MAX_GROUPS": "-5"}},
	}
	for _, tc := range cases {
		if _, err := Load("serve", "", tc.args, env(tc.env), &bytes.Buffer{}); err == nil {
			t.Errorf("%v %v: no error", tc.args, tc.env)
		}
	}
	if _, err := Load("serve", "", []string{"-config", filepath.Join(dir, "missing.json")}, env(nil), &bytes.Buffer{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestHelpListsEverySetting(t *testing.T) {
	var out bytes.Buffer
	_, err := Load("serve", "Usage: dpsd serve [flags]\n", []string{"--help"}, env(nil), &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err %v", err)
	}
	help := out.String()
	if !strings.HasPrefix(help, "Usage: dpsd serve") {
		t.Fatalf("help head %q", help)
	}
	for _, s := range settings() {
		if !strings.Contains(help, "-"+s.name) || !strings.Contains(help, envName(s.name)) {
			t.Errorf("help lacks %s / %s", s.name, envName(s.name))
		}
	}
}

// TestJSONLogDurations: JSON logs write durations as text, at the top level
// and inside groups; the text format already does.
func TestJSONLogDurations(t *testing.T) {
	c := Default()
	c.LogFormat = "json"
	var b bytes.Buffer
	log := c.Logger(&b).With("shutdownTimeout", 30*time.Second, "id", "a").WithGroup("g")
	log.Info("x", "timeout", 1500*time.Millisecond, slog.Group("audit", "took", 2*time.Minute), "n", 3)
	var rec struct {
		ShutdownTimeout string `json:"shutdownTimeout"`
		ID              string `json:"id"`
		G               struct {
			Timeout string `json:"timeout"`
			Audit   struct {
				Took string `json:"took"`
			} `json:"audit"`
			N int `json:"n"`
		} `json:"g"`
	}
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil {
		t.Fatalf("%v: %s", err, b.String())
	}
	if rec.ShutdownTimeout != "30s" || rec.ID != "a" || rec.G.Timeout != "1.5s" || rec.G.Audit.Took != "2m0s" || rec.G.N != 3 {
		t.Fatalf("log record %s", b.String())
	}
	b.Reset()
	c.Logger(&b).Info("no durations", "n", 1)
	if !strings.Contains(b.String(), `"msg":"no durations","n":1}`) {
		t.Fatalf("log record %s", b.String())
	}
	b.Reset()
	c.LogFormat = "text"
	c.Logger(&b).Info("x", "timeout", 1500*time.Millisecond)
	if !strings.Contains(b.String(), "timeout=1.5s") {
		t.Fatalf("text log %s", b.String())
	}
}

func TestIssuerSettings(t *testing.T) {
	c, err := Load("serve", "", nil, env(nil), &bytes.Buffer{})
	if err != nil || c.Issuer != IssuerBuiltin || c.IssuerKeyType != string(issuer.KeyECDSAP256) || c.IssuerCert != "" {
		t.Fatalf("defaults: %q %q %q, %v", c.Issuer, c.IssuerKeyType, c.IssuerCert, err)
	}
	// Every key type the built-in CA can generate is a valid setting.
	for _, kt := range issuer.KeyTypes() {
		if c, err := Load("serve", "", []string{"-issuer-key-type", strings.ToUpper(string(kt))}, env(nil), &bytes.Buffer{}); err != nil || c.IssuerKeyType != string(kt) {
			t.Errorf("issuer-key-type %s: %q %v", kt, c.IssuerKeyType, err)
		}
	}
	c, err = Load("serve", "", nil, env(map[string]string{"DPSD_ISSUER": "none"}), &bytes.Buffer{})
	if err != nil || c.Issuer != IssuerNone {
		t.Fatalf("DPSD_ISSUER=none: %q %v", c.Issuer, err)
	}
	for _, args := range [][]string{
		{"-issuer", "vault"},
		{"-issuer-key-type", "ed25519"},
		{"-issuer-cert", "ca.pem"},
		{"-issuer-key", "ca-key.pem"},
		{"-issuer", "none", "-issuer-cert", "ca.pem", "-issuer-key", "ca-key.pem"},
	} {
		// Flags wrap a setter's error as text: look for it.
		if _, err := Load("serve", "", args, env(nil), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), ErrInvalid.Error()) {
			t.Errorf("%v: %v", args, err)
		}
	}
}

// TestIssuerKeyNotRedacted: issuer-key names a file, which is the secret;
// the file name is shown.
func TestIssuerKeyNotRedacted(t *testing.T) {
	vals, _, err := Effective("serve", "", []string{"-issuer-cert", "/etc/dpsd/ca.pem", "-issuer-key", "/etc/dpsd/ca-key.pem"}, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vals {
		if v.Name == "issuer-key" && (v.Secret || v.Value != "/etc/dpsd/ca-key.pem") {
			t.Fatalf("issuer-key shown as %+v", v)
		}
	}
}
