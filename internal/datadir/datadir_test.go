package datadir

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/devca"
)

func TestOpenGeneratesAndReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Created {
		t.Fatal("first open must generate secrets")
	}
	if !regexp.MustCompile(`^0ne[0-9A-F]{8}$`).MatchString(d.Secrets.IDScope) {
		t.Fatalf("id scope %q", d.Secrets.IDScope)
	}
	if len(d.Secrets.ChallengeSecret) != SecretSize || len(d.Secrets.ServicePolicyKey) != SecretSize {
		t.Fatal("secret sizes")
	}
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", fi.Mode().Perm())
	}
	fi, _ = os.Stat(d.File(SecretsFile))
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("secrets mode %v", fi.Mode().Perm())
	}
	d2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d2.Created || d2.Secrets.IDScope != d.Secrets.IDScope || !bytes.Equal(d2.Secrets.ChallengeSecret, d.Secrets.ChallengeSecret) {
		t.Fatal("second open must reuse the secrets")
	}
	if err := os.Chmod(d.File(SecretsFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); !errors.Is(err, ErrInsecure) {
		t.Fatalf("world-readable secrets: %v", err)
	}
	os.Chmod(d.File(SecretsFile), 0o600)
	os.WriteFile(d.File(SecretsFile), []byte("{"), 0o600)
	if _, err := Open(dir); !errors.Is(err, ErrBadSecrets) {
		t.Fatalf("malformed secrets: %v", err)
	}
}

func TestDevTLSPersistsAndRenews(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	names := []string{"localhost", "127.0.0.1"}
	a, err := d.DevTLS(names, now)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Renewed {
		t.Fatal("first call must issue")
	}
	for _, f := range []string{CAKeyFile, ServerKeyFile} {
		fi, _ := os.Stat(d.File(f))
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v", f, fi.Mode().Perm())
		}
	}
	b, err := d.DevTLS(names, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if b.Renewed || !bytes.Equal(a.CertPEM, b.CertPEM) || !bytes.Equal(a.CACertPEM, b.CACertPEM) {
		t.Fatal("second call must reuse CA and certificate")
	}
	c, err := d.DevTLS([]string{"localhost", "127.0.0.1", "dps.example"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Renewed || !bytes.Equal(a.CACertPEM, c.CACertPEM) {
		t.Fatal("changed names must reissue under the same CA")
	}
	cert, _ := devca.ParseCert(c.CertPEM)
	if len(cert.DNSNames) != 2 {
		t.Fatalf("dns names %v", cert.DNSNames)
	}
	e, err := d.DevTLS([]string{"localhost", "127.0.0.1", "dps.example"}, now.Add(ServerValidity))
	if err != nil {
		t.Fatal(err)
	}
	if !e.Renewed {
		t.Fatal("an expiring certificate must be reissued")
	}
}

// TestReadOnlyPolicyKey: a new data directory has a read-only policy key
// distinct from the owner's, and one written before that key existed gets
// one on its next Open, kept from then on.
func TestReadOnlyPolicyKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Secrets.ServiceReadPolicyKey) != SecretSize || bytes.Equal(d.Secrets.ServiceReadPolicyKey, d.Secrets.ServicePolicyKey) {
		t.Fatal("the read-only key must be its own 32-byte secret")
	}

	// A secrets file of an earlier version: no read-only key.
	old := d.Secrets
	old.ServiceReadPolicyKey = nil
	d.Secrets = old
	if err := d.writeSecrets(); err != nil {
		t.Fatal(err)
	}
	up, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if up.Created || len(up.Secrets.ServiceReadPolicyKey) != SecretSize || !bytes.Equal(up.Secrets.ServicePolicyKey, old.ServicePolicyKey) {
		t.Fatal("an older secrets file must keep its keys and gain a read-only key")
	}
	again, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Secrets.ServiceReadPolicyKey, up.Secrets.ServiceReadPolicyKey) {
		t.Fatal("the added read-only key must be persisted")
	}

	path, err := again.WriteReadOnlyConnectionString("dps.example.net", "reader")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := ConnectionString("dps.example.net", "reader", again.Secrets.ServiceReadPolicyKey) + "\n"
	if string(b) != want {
		t.Fatalf("read-only connection string file %q, want %q", b, want)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("connection string mode %v", fi.Mode().Perm())
	}
}

// TestReadSecretsOnlyLooks: ReadSecrets never creates a directory or a
// file, and reads what Open generated.
func TestReadSecretsOnlyLooks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if _, err := ReadSecrets(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("no directory: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadSecrets created %s: %v", dir, err)
	}
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ReadSecrets(dir)
	if err != nil || s.IDScope != d.Secrets.IDScope || !bytes.Equal(s.ServiceReadPolicyKey, d.Secrets.ServiceReadPolicyKey) {
		t.Fatalf("ReadSecrets: %+v %v", s, err)
	}
	os.WriteFile(d.File(SecretsFile), []byte(`{"idScope": "0ne00000001"}`), 0o600)
	if _, err := ReadSecrets(dir); !errors.Is(err, ErrBadSecrets) {
		t.Fatalf("short secrets: %v", err)
	}
}
