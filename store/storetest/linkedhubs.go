package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// FullLinkedHub returns a linked hub with every field set, secrets included.
func FullLinkedHub(name string) *store.LinkedHub {
	apply := false
	return &store.LinkedHub{
		Name:                  name,
		ConnectionString:      "HostName=" + name + ";SharedAccessKeyName=registryReadWrite;SharedAccessKey=aHViLXNlY3JldC1rZXktMDEyMzQ1Njc4OWFiY2RlZg==",
		AllocationWeight:      250,
		ApplyAllocationPolicy: &apply,
		Webhook:               &store.HubWebhook{URL: "https://platform.example/dps", Secret: "d2ViaG9vay1zZWNyZXQtMDEyMzQ1Njc4OWFiY2RlZg=="},
		X509Identity:          store.X509CertificateAuthority,
	}
}

// linkedHubs: a linked hub round-trips whole, secrets included, under any
// case of its name; writes are conditional like the other records; List
// returns every hub in key order; the revision moves with every write of a
// linked hub and with nothing else; the hubs survive a reopen.
func (s *suite) linkedHubs(t *testing.T) {
	ctx := context.Background()
	clock := NewClock()
	st := s.open(t, clock)
	rev0, err := st.LinkedHubsRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := st.ListLinkedHubs(ctx); err != nil || len(l) != 0 {
		t.Fatalf("empty list: %v %v", l, err)
	}
	in := FullLinkedHub("Hub-B.azure-devices.net")
	orig, _ := json.Marshal(in)
	put, err := st.PutLinkedHub(ctx, in, "")
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := json.Marshal(in); !bytes.Equal(orig, after) {
		t.Fatal("PutLinkedHub modified its argument")
	}
	want := *in
	want.ETag, want.CreatedAt, want.UpdatedAt = put.ETag, clock.Now(), clock.Now()
	if put.ETag == "" {
		t.Fatal("no etag")
	}
	SameJSON(t, "put", put, &want)
	for _, name := range []string{"hub-b.azure-devices.net", "HUB-B.AZURE-DEVICES.NET"} {
		got, err := st.GetLinkedHub(ctx, name)
		if err != nil {
			t.Fatalf("get %s: %v", name, err)
		}
		SameJSON(t, "get "+name, got, &want)
	}
	// A returned record is the caller's.
	put.Webhook.Secret, put.ConnectionString = "changed", "changed"
	if got, _ := st.GetLinkedHub(ctx, in.Name); got.ConnectionString != in.ConnectionString || got.Webhook.Secret != in.Webhook.Secret {
		t.Fatal("the returned record shares memory with the stored one")
	}
	rev1, err := st.LinkedHubsRevision(ctx)
	if err != nil || rev1 == rev0 {
		t.Fatalf("revision after a put: %d -> %d (%v)", rev0, rev1, err)
	}
	// Writes of other records leave the revision alone; so do reads.
	if _, err := st.PutGroup(ctx, FullGroup("g"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RecordRegistration(ctx, FullRegistration("r", ""), nil); err != nil {
		t.Fatal(err)
	}
	if rev, _ := st.LinkedHubsRevision(ctx); rev != rev1 {
		t.Fatalf("revision moved without a linked hub write: %d -> %d", rev1, rev)
	}
	// A hub without secrets or options round-trips as given.
	bare := &store.LinkedHub{Name: "hub-a.example.net"}
	pb, err := st.PutLinkedHub(ctx, bare, "*")
	if err != nil {
		t.Fatal(err)
	}
	if pb.ConnectionString != "" || pb.Webhook != nil || pb.ApplyAllocationPolicy != nil || pb.Weight() != store.DefaultAllocationWeight || !pb.Allocates() {
		t.Fatalf("bare hub: %+v", pb)
	}
	list, err := st.ListLinkedHubs(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("list: %d %v", len(list), err)
	}
	if list[0].Name != "hub-a.example.net" || list[1].Name != in.Name || list[1].ConnectionString != in.ConnectionString ||
		list[1].Webhook == nil || list[1].Webhook.Secret != in.Webhook.Secret {
		t.Fatalf("list order or secrets: %+v %+v", list[0], list[1])
	}
	// Conditional writes and deletes.
	clock.Advance(time.Minute)
	upd := FullLinkedHub("hub-b.azure-devices.net")
	upd.AllocationWeight = 7
	if _, err := st.PutLinkedHub(ctx, upd, "stale"); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale put: %v", err)
	}
	put2, err := st.PutLinkedHub(ctx, upd, `"`+want.ETag+`"`)
	if err != nil || put2.AllocationWeight != 7 || !put2.CreatedAt.Equal(want.CreatedAt) || !put2.UpdatedAt.Equal(clock.Now()) || put2.ETag == want.ETag {
		t.Fatalf("update: %+v %v", put2, err)
	}
	if _, err := st.PutLinkedHub(ctx, FullLinkedHub("missing.example.net"), "etag"); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("put of a missing hub with an etag: %v", err)
	}
	if err := st.DeleteLinkedHub(ctx, "hub-b.azure-devices.net", want.ETag); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("stale delete: %v", err)
	}
	rev2, _ := st.LinkedHubsRevision(ctx)
	if err := st.DeleteLinkedHub(ctx, "HUB-A.example.net", ""); err != nil {
		t.Fatal(err)
	}
	if rev, _ := st.LinkedHubsRevision(ctx); rev == rev2 {
		t.Fatal("revision did not move with a delete")
	}
	if _, err := st.GetLinkedHub(ctx, "hub-a.example.net"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := st.DeleteLinkedHub(ctx, "hub-a.example.net", ""); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	if _, err := st.GetLinkedHub(ctx, ""); !errors.Is(err, store.ErrNotFound) || !errors.Is(err, store.ErrInvalidID) {
		t.Fatalf("empty name: %v", err)
	}
	if _, err := st.PutLinkedHub(ctx, nil, ""); !errors.Is(err, store.ErrInvalidRecord) {
		t.Fatalf("nil hub: %v", err)
	}
	s.check(t, st)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	r := s.e.Reopen(t, st)
	got, err := r.GetLinkedHub(ctx, "hub-b.azure-devices.net")
	if err != nil || got.ConnectionString != upd.ConnectionString || got.ETag != put2.ETag {
		t.Fatalf("after reopen: %+v %v", got, err)
	}
	s.check(t, r)
}
