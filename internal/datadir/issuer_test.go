package datadir

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509/pkix"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/issuer"
)

// TestIssuingCAGeneratedOnceAndKept: the first call generates the CA with
// the key type asked for (key 0600, separate from the TLS CA); later calls
// load the same one whatever key type they ask for.
func TestIssuingCAGeneratedOnceAndKept(t *testing.T) {
	d, err := Open(filepath.Join(t.TempDir(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ca, created, err := d.IssuingCA(issuer.KeyECDSAP384, "0ne00000ABC", now)
	if err != nil || !created {
		t.Fatalf("first: created %v, %v", created, err)
	}
	if k, ok := ca.Certificate().PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P384() {
		t.Fatalf("key %T", ca.Certificate().PublicKey)
	}
	if cn := ca.Certificate().Subject.CommonName; cn != "dpsd issuing CA 0ne00000ABC" {
		t.Fatalf("subject %q", cn)
	}
	for _, f := range []string{IssuingCAKeyFile, IssuingCACertFile} {
		fi, err := os.Stat(d.File(f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	if _, err := os.Stat(d.File(CACertFile)); err == nil {
		t.Fatal("the issuing CA wrote the TLS CA's file")
	}
	again, created, err := d.IssuingCA(issuer.KeyRSA2048, "0ne00000ABC", now)
	if err != nil || created || !again.Certificate().Equal(ca.Certificate()) {
		t.Fatalf("second: created %v, same %v, %v", created, err == nil && again.Certificate().Equal(ca.Certificate()), err)
	}
	if _, isRSA := again.Certificate().PublicKey.(*rsa.PublicKey); isRSA {
		t.Fatal("the key type of a later call replaced the CA")
	}
}

// TestIssuingCANeverReplacesAHalf: with only the key, or only the
// certificate, or a key readable by others, the CA is refused and nothing
// is generated over it.
func TestIssuingCANeverReplacesAHalf(t *testing.T) {
	for name, damage := range map[string]func(d *Dir){
		"certificate removed": func(d *Dir) { _ = os.Remove(d.File(IssuingCACertFile)) },
		"key removed":         func(d *Dir) { _ = os.Remove(d.File(IssuingCAKeyFile)) },
		"key readable":        func(d *Dir) { _ = os.Chmod(d.File(IssuingCAKeyFile), 0o644) },
		"key garbage":         func(d *Dir) { _ = os.WriteFile(d.File(IssuingCAKeyFile), []byte("junk"), 0o600) },
	} {
		d, err := Open(filepath.Join(t.TempDir(), "data"))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := d.IssuingCA(issuer.KeyECDSAP256, "s", time.Now()); err != nil {
			t.Fatal(err)
		}
		damage(d)
		keyBefore, _ := os.ReadFile(d.File(IssuingCAKeyFile))
		certBefore, _ := os.ReadFile(d.File(IssuingCACertFile))
		if _, _, err := d.IssuingCA(issuer.KeyECDSAP256, "s", time.Now()); err == nil {
			t.Errorf("%s: accepted", name)
		} else if name == "key readable" && (!errors.Is(err, ErrInsecure) || !strings.Contains(err.Error(), "chmod 600")) {
			t.Errorf("%s: %v", name, err)
		}
		keyAfter, _ := os.ReadFile(d.File(IssuingCAKeyFile))
		certAfter, _ := os.ReadFile(d.File(IssuingCACertFile))
		if !bytes.Equal(keyBefore, keyAfter) || !bytes.Equal(certBefore, certAfter) {
			t.Errorf("%s: a file was rewritten", name)
		}
	}
}

// TestLoadIssuingCAOperatorFiles: an operator's CA files load; an error
// names the files and never quotes the key.
func TestLoadIssuingCAOperatorFiles(t *testing.T) {
	dir := t.TempDir()
	ca, err := issuer.NewCA(issuer.KeyECDSAP256, pkixName("operator CA"), time.Now(), time.Hour*24)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := ca.KeyPEM()
	certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(certFile, ca.ChainPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadIssuingCA(certFile, keyFile)
	if err != nil || !got.Certificate().Equal(ca.Certificate()) {
		t.Fatalf("load: %v", err)
	}
	other, _ := issuer.NewCA(issuer.KeyECDSAP256, pkixName("other"), time.Now(), time.Hour)
	otherKey, _ := other.KeyPEM()
	if err := os.WriteFile(keyFile, otherKey, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadIssuingCA(certFile, keyFile)
	if err == nil || !strings.Contains(err.Error(), keyFile) || strings.Contains(err.Error(), string(otherKey[30:60])) {
		t.Fatalf("mismatched key: %v", err)
	}
}

func pkixName(cn string) pkix.Name { return pkix.Name{CommonName: cn} }
