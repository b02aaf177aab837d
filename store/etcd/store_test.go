package etcd

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tpmdps/dpsd/internal/etcdtest"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/storetest"
)

// TestSecretsSealedInEtcd: what etcd holds (and a backup carries) has no
// symmetric key or hub key in the clear.
func TestSecretsSealedInEtcd(t *testing.T) {
	m := etcdtest.Start(t)
	s := openTest(t, m, "/sealed/")
	ctx := context.Background()
	e := storetest.FullEnrollment("dev")
	if _, err := s.PutEnrollment(ctx, e, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutGroup(ctx, storetest.FullGroup("grp"), ""); err != nil {
		t.Fatal(err)
	}
	r := storetest.FullRegistration("dev", "grp")
	if _, err := s.RecordRegistration(ctx, r, nil); err != nil {
		t.Fatal(err)
	}
	resp, err := etcdtest.Client(t, m.Endpoint()).Get(ctx, "/sealed/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var backup bytes.Buffer
	if _, err := s.Backup(ctx, &backup); err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{e.Attestation.SymmetricKey.PrimaryKey, e.Attestation.SymmetricKey.SecondaryKey, string(r.HubKey)} {
		for _, kv := range resp.Kvs {
			if bytes.Contains(kv.Value, []byte(secret)) {
				t.Fatalf("%s holds a secret in the clear", kv.Key)
			}
		}
		if bytes.Contains(backup.Bytes(), []byte(secret)) {
			t.Fatal("the backup holds a secret in the clear")
		}
	}
	if len(resp.Kvs) < 6 {
		t.Fatalf("only %d keys under the prefix", len(resp.Kvs))
	}
}

// TestWrongKeyRefused: a prefix opened with another data key is refused at
// Open, before any record is read.
func TestWrongKeyRefused(t *testing.T) {
	m := etcdtest.Start(t)
	openTest(t, m, "/keyed/")
	_, err := Open(context.Background(), Options{Endpoints: []string{m.Endpoint()}, Prefix: "/keyed/", Key: bytes.Repeat([]byte{9}, 32)})
	if !errors.Is(err, ErrKey) {
		t.Fatalf("open with another key: %v, want ErrKey", err)
	}
}

// TestBackupTamperAndRestoreRules: a cut or altered backup is refused; a
// restore needs an empty prefix and the same store key.
func TestBackupTamperAndRestoreRules(t *testing.T) {
	m := etcdtest.Start(t)
	ctx := context.Background()
	s := openTest(t, m, "/src/")
	for _, id := range []string{"a", "b", "c"} {
		if _, err := s.PutEnrollment(ctx, storetest.FullEnrollment(id), ""); err != nil {
			t.Fatal(err)
		}
	}
	var b bytes.Buffer
	if _, err := s.Backup(ctx, &b); err != nil {
		t.Fatal(err)
	}
	good := b.Bytes()
	if _, n, err := ReadBackup(bytes.NewReader(good), nil); err != nil || n < 5 {
		t.Fatalf("read: %d records, %v", n, err)
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 1
	for name, data := range map[string][]byte{
		"cut":      good[:len(good)-10],
		"altered":  flipped,
		"appended": append(bytes.Clone(good), 0),
		"empty":    nil,
	} {
		if _, _, err := ReadBackup(bytes.NewReader(data), nil); !errors.Is(err, ErrBackup) {
			t.Errorf("%s backup: %v, want ErrBackup", name, err)
		}
	}
	if _, err := s.Restore(ctx, bytes.NewReader(good)); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("restore into a prefix with records: %v", err)
	}
	other, err := Open(ctx, Options{Endpoints: []string{m.Endpoint()}, Prefix: "/other-key/", Key: bytes.Repeat([]byte{9}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Restore(ctx, bytes.NewReader(good)); !errors.Is(err, ErrKey) {
		t.Fatalf("restore under another key: %v, want ErrKey", err)
	}
}

// TestUnavailable: once etcd is gone, calls fail within the request
// timeout with store.ErrUnavailable (the service answers "try again"), not
// with an answer about the data.
func TestUnavailable(t *testing.T) {
	m := etcdtest.Start(t)
	s := openTest(t, m, "/gone/")
	ctx := context.Background()
	if _, err := s.PutEnrollment(ctx, storetest.FullEnrollment("x"), ""); err != nil {
		t.Fatal(err)
	}
	m.Stop()
	for name, call := range map[string]func() error{
		"get": func() error { _, err := s.GetEnrollment(ctx, "x"); return err },
		"put": func() error { _, err := s.PutEnrollment(ctx, storetest.FullEnrollment("y"), ""); return err },
		"record": func() error {
			_, err := s.RecordRegistration(ctx, &store.Registration{RegistrationID: "r"}, nil)
			return err
		},
		"use": func() error {
			return s.UseChallenge(ctx, []byte("c"), time.Now().Add(time.Minute))
		},
	} {
		err := call()
		if !errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s with etcd stopped: %v, want ErrUnavailable", name, err)
		}
	}
}

// TestParseURL: the --store syntax.
func TestParseURL(t *testing.T) {
	eps, pfx, err := ParseURL("etcd://a:2379,b:2380,c/prod/dpsd")
	if err != nil || strings.Join(eps, " ") != "a:2379 b:2380 c:2379" || pfx != "/prod/dpsd/" {
		t.Fatalf("%v %q %v", eps, pfx, err)
	}
	if _, pfx, err := ParseURL("etcd://a:2379"); err != nil || pfx != DefaultPrefix {
		t.Fatalf("default prefix: %q %v", pfx, err)
	}
	for _, bad := range []string{"bolt:x", "etcd:///p", "etcd://a,,b/p", "etcd://u:p@a/p", "http://a:2379/p", "etcd://a/p?x=1"} {
		if _, _, err := ParseURL(bad); !errors.Is(err, ErrURL) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
