package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/internal/etcdtest"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/bolt"
	etcdstore "github.com/tpmdps/dpsd/store/etcd"
	"github.com/tpmdps/dpsd/store/storetest"
)

// runOK runs dpsd with args and fails t unless it exits 0.
func runOK(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(context.Background(), args, &out, &errb); code != 0 {
		t.Fatalf("dpsd %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	}
	return out.String()
}

// TestClusterInit: the secrets are written once, 0600, with everything a
// node needs; a second init refuses to overwrite them.
func TestClusterInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "secrets")
	runOK(t, "cluster", "init", dir, "--tls-names", "dps.example.net,127.0.0.1")
	sec, err := datadir.ReadClusterSecrets(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(sec.StoreKey) != 32 || len(sec.TicketSecret) != 32 || sec.IDScope == "" {
		t.Fatalf("secrets %+v", sec.IDScope)
	}
	for _, f := range []string{datadir.SecretsFile, datadir.ClusterTLSCertFile, datadir.ClusterTLSKeyFile, datadir.CACertFile, datadir.CAKeyFile, datadir.IssuingCACertFile, datadir.IssuingCAKeyFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	var errb bytes.Buffer
	if code := run(context.Background(), []string{"cluster", "init", dir}, &bytes.Buffer{}, &errb); code == 0 || !strings.Contains(errb.String(), "already exist") {
		t.Fatalf("second init: %d %s", code, errb.String())
	}
	if again, _ := datadir.ReadClusterSecrets(dir); !bytes.Equal(again.StoreKey, sec.StoreKey) {
		t.Fatal("the second init changed the secrets")
	}
}

// TestStoreCopyAndRestore: dpsd store copy moves a bbolt installation to
// etcd with every record, time and secret kept and verifies it; a second
// copy into the same prefix is refused; an etcd backup restores into
// another prefix with dpsd store restore.
func TestStoreCopyAndRestore(t *testing.T) {
	m := etcdtest.Start(t)
	secrets := filepath.Join(t.TempDir(), "secrets")
	runOK(t, "cluster", "init", secrets)
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "dpsd.db")
	clock := storetest.NewClock()
	src, err := bolt.Open(dbPath, bolt.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	const n = 150
	for i := range n {
		if _, err := src.PutEnrollment(ctx, storetest.FullEnrollment(strings.Repeat("e", 1+i%3)+string(rune('a'+i%26))+time.Duration(i).String()), ""); err != nil {
			t.Fatal(err)
		}
		group := ""
		if i%2 == 0 {
			group = "grp"
		}
		if _, err := src.RecordRegistration(ctx, storetest.FullRegistration("r"+time.Duration(i).String(), group), nil); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Minute)
	}
	if _, err := src.PutGroup(ctx, storetest.FullGroup("grp"), ""); err != nil {
		t.Fatal(err)
	}
	hub := storetest.FullLinkedHub("hub-a.azure-devices.net")
	if _, err := src.PutLinkedHub(ctx, hub, ""); err != nil {
		t.Fatal(err)
	}
	// A registration waiting in the outbox: copy refuses until it is done.
	exp := clock.Now().Add(time.Hour)
	waiting := &store.Operation{ID: "op-w", RegistrationID: "w", Status: store.RegistrationAssigning, CreatedAt: clock.Now(), ExpiresAt: exp}
	if err := src.EnqueueJob(ctx, waiting, storetest.NewJob("op-w", "w", clock.Now()), 0); err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	var errw bytes.Buffer
	if code := run(ctx, []string{"store", "copy", "--from", "bolt:" + dbPath, "--to", "etcd://" + m.Endpoint() + "/early", "--secrets-dir", secrets}, &bytes.Buffer{}, &errw); code == 0 ||
		!strings.Contains(errw.String(), "waiting in the outbox") {
		t.Fatalf("copy with a pending job: %d %s", code, errw.String())
	}
	if src, err = bolt.Open(dbPath, bolt.Options{Now: clock.Now}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.FinishJob(ctx, "op-w", "", nil, waiting); err == nil {
		t.Fatal("finished a job nobody holds")
	}
	claimed, err := src.ClaimJobs(ctx, "me", time.Minute, 1)
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	if _, err := src.FinishJob(ctx, "op-w", "me", nil, waiting); err != nil {
		t.Fatal(err)
	}
	want, _ := src.GetRegistration(ctx, "r0s")
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	target := "etcd://" + m.Endpoint() + "/moved"
	out := runOK(t, "store", "copy", "--from", "bolt:"+dbPath, "--to", target, "--secrets-dir", secrets)
	if !strings.Contains(out, "verified") || !strings.Contains(out, "1 linked hubs, 1 enrollment groups") {
		t.Fatalf("copy: %s", out)
	}
	var errb bytes.Buffer
	if code := run(ctx, []string{"store", "copy", "--from", "bolt:" + dbPath, "--to", target, "--secrets-dir", secrets}, &bytes.Buffer{}, &errb); code == 0 ||
		!strings.Contains(errb.String(), "not empty") {
		t.Fatalf("copy into a prefix with records: %d %s", code, errb.String())
	}
	sec, _ := datadir.ReadClusterSecrets(secrets)
	dst, err := etcdstore.Open(ctx, etcdstore.Options{Endpoints: []string{m.Endpoint()}, Prefix: "/moved/", Key: sec.StoreKey})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	got, err := dst.GetRegistration(ctx, "R0S")
	if err != nil || !got.CreatedAt.Equal(want.CreatedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) || !bytes.Equal(got.HubKey, want.HubKey) {
		t.Fatalf("copied registration %+v %v, want times %v %v", got, err, want.CreatedAt, want.UpdatedAt)
	}
	if h, err := dst.GetLinkedHub(ctx, hub.Name); err != nil || h.ConnectionString != hub.ConnectionString || h.Webhook.Secret != hub.Webhook.Secret || h.AllocationWeight != hub.AllocationWeight {
		t.Fatalf("copied linked hub %+v %v", h, err)
	}
	if c, _ := dst.CountGroupRegistrations(ctx, "grp"); c != n/2 {
		t.Fatalf("group registrations %d", c)
	}
	// Backup of the etcd store, restored into another prefix.
	backup := filepath.Join(t.TempDir(), "etcd.backup")
	f, err := os.Create(backup)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Backup(ctx, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := verifyBackupFile(backup); err != nil {
		t.Fatalf("dpsd backup's check of an etcd backup: %v", err)
	}
	out = runOK(t, "store", "restore", backup, "--to", "etcd://"+m.Endpoint()+"/restored", "--secrets-dir", secrets)
	if !strings.Contains(out, "consistent") {
		t.Fatalf("restore: %s", out)
	}
	runOK(t, "store", "check", "--store", "etcd://"+m.Endpoint()+"/restored", "--secrets-dir", secrets)
	r, err := etcdstore.Open(ctx, etcdstore.Options{Endpoints: []string{m.Endpoint()}, Prefix: "/restored/", Key: sec.StoreKey})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if c, _ := r.CountEnrollments(ctx); c != n {
		t.Fatalf("restored enrollments %d", c)
	}
	if _, err := r.GetGroup(ctx, "GRP"); err != nil {
		t.Fatal(err)
	}
	// A cut backup is refused before anything is written.
	data, _ := os.ReadFile(backup)
	cut := filepath.Join(t.TempDir(), "cut.backup")
	os.WriteFile(cut, data[:len(data)-40], 0o600)
	errb.Reset()
	if code := run(ctx, []string{"store", "restore", cut, "--to", "etcd://" + m.Endpoint() + "/cut", "--secrets-dir", secrets}, &bytes.Buffer{}, &errb); code == 0 {
		t.Fatal("a cut backup was restored")
	}
	if err := verifyBackupFile(cut); !errors.Is(err, etcdstore.ErrBackup) {
		t.Fatalf("dpsd backup's check of a cut etcd backup: %v", err)
	}
}
