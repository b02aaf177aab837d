package config

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestEffectiveSourcesAndPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "dpsd.json")
	if err := os.WriteFile(file, []byte(`{"data-dir": "/from/file", "hubs": ["a.example", "b.example"], "id-scope": "0neFILE"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	e := map[string]string{"DPSD_CONFIG": file, "DPSD_ID_SCOPE": "0neENV", "DPSD_LOG_LEVEL": "debug"}
	vals, c, err := Effective("config print", "", []string{"-log-level", "warn", "-mqtt-addr="}, env(e), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/from/file" || c.IDScope != "0neENV" {
		t.Fatalf("config %+v", c)
	}
	got := make(map[string]Value)
	for _, v := range vals {
		got[v.Name] = v
	}
	if len(vals) != len(settings())+1 {
		t.Fatalf("%d values for %d settings", len(vals), len(settings()))
	}
	for name, want := range map[string]Value{
		"config":     {Value: file, Source: SourceEnv},
		"data-dir":   {Value: "/from/file", Source: SourceFile},
		"hubs":       {Value: "a.example,b.example", Source: SourceFile},
		"id-scope":   {Value: "0neENV", Source: SourceEnv},
		"log-level":  {Value: "warn", Source: SourceFlag},
		"mqtt-addr":  {Value: "", Source: SourceFlag},
		"api-addr":   {Value: ":8443", Source: SourceDefault},
		"mqtts-addr": {Value: ":8883", Source: SourceDefault},
	} {
		if g := got[name]; g.Value != want.Value || g.Source != want.Source {
			t.Errorf("%s = %q from %s, want %q from %s", name, g.Value, g.Source, want.Value, want.Source)
		}
	}
	if got["log-level"].Env != "DPSD_LOG_LEVEL" {
		t.Errorf("env name %q", got["log-level"].Env)
	}
	if _, _, err := Effective("config print", "", []string{"-log-format", "xml"}, env(nil), &bytes.Buffer{}); err == nil {
		t.Fatal("an invalid setting was accepted")
	}
}

func TestRedaction(t *testing.T) {
	for name, want := range map[string]bool{
		"tls-key": false, "tls-cert": false, "data-dir": false, "hubs": false, "id-scope": false,
		"hub-shared-access-key": true, "webhook-password": true, "metrics-token": true,
		"hub-connection-string": true, "challenge-secret": true,
	} {
		if isSecret(name) != want {
			t.Errorf("isSecret(%q) = %v", name, !want)
		}
	}
	if got := redact("c2VjcmV0", true); got != Redacted {
		t.Errorf("secret shown: %q", got)
	}
	if got := redact("", true); got != "" {
		t.Errorf("unset secret shown as %q", got)
	}
	if got := redact("https://user:hunter2@example.com/x", false); got != "https://user:xxxxx@example.com/x" {
		t.Errorf("URL password: %q", got)
	}
}

// TestDurationsAreNotSecret: sas-max-lifetime names SAS tokens but holds a
// duration, which is shown; a string setting so named is still redacted.
func TestDurationsAreNotSecret(t *testing.T) {
	vals, _, err := Effective("config print", "", []string{"-sas-max-lifetime", "2h"}, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vals {
		if v.Name == "sas-max-lifetime" && (v.Value != "2h" || v.Secret) {
			t.Fatalf("sas-max-lifetime shown as %q (secret %v)", v.Value, v.Secret)
		}
		if v.Value == Redacted {
			t.Errorf("%s redacted, but no setting of dpsd holds a secret", v.Name)
		}
	}
	for _, s := range settings() {
		if s.set.quantity && s.secret() {
			t.Errorf("%s: a duration or number is redacted", s.name)
		}
	}
	secretString := setting{name: "hub-sas-token", set: str(func(c *Config) *string { return &c.IDScope })}
	if !secretString.secret() {
		t.Error("a string setting named a SAS token is not redacted")
	}
	secretDuration := setting{name: "hub-sas-token", set: dur(func(c *Config) *time.Duration { return &c.SASMaxLifetime })}
	if secretDuration.secret() {
		t.Error("a duration is redacted")
	}
}
