package provision

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/store"
)

// snapshotOf is the hub snapshot of linked hubs (no connectors) and the
// service-wide hubs of s.
func snapshotOf(s *Service, hubs ...*store.LinkedHub) *hubSnapshot {
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s.buildHubSnapshot(context.Background(), 1, hubs)
}

func TestAllocatePolicies(t *testing.T) {
	s := &Service{cfg: Config{Hubs: []string{"svc-1", "svc-2"}}}
	snap := snapshotOf(s)
	assigned := &store.Registration{Status: store.RegistrationAssigned, AssignedHub: "old-hub", DeviceID: "old-dev"}
	for _, tc := range []struct {
		name    string
		target  allocationTarget
		prev    *store.Registration
		hubs    []string // acceptable hubs
		sub     string
		errCode int
		custom  []string // linkedHubs of a custom allocation
	}{
		{name: "static", target: allocationTarget{policy: "static", hubHostName: "h1", hubs: []string{"h2", "h3"}}, hubs: []string{"h1"}, sub: SubstatusInitialAssignment},
		{name: "static without hub", target: allocationTarget{policy: "static"}, errCode: ErrorCodeNoHub},
		{name: "implicit static", target: allocationTarget{hubHostName: "h1"}, hubs: []string{"h1"}, sub: SubstatusInitialAssignment},
		{name: "hashed enrollment hubs", target: allocationTarget{policy: "Hashed", hubs: []string{"h2", "h3"}}, hubs: []string{"h2", "h3"}, sub: SubstatusInitialAssignment},
		{name: "geoLatency as hashed", target: allocationTarget{policy: "geoLatency"}, hubs: []string{"svc-1", "svc-2"}, sub: SubstatusInitialAssignment},
		{name: "service hubs", target: allocationTarget{}, hubs: []string{"svc-1", "svc-2"}, sub: SubstatusInitialAssignment},
		{name: "custom", target: allocationTarget{policy: "custom", hubs: []string{"h2", " "}}, custom: []string{"h2"}},
		{name: "custom, service hubs", target: allocationTarget{policy: "custom"}, custom: []string{"svc-1", "svc-2"}},
		{name: "custom, never", target: allocationTarget{policy: "custom", hubs: []string{"h2"}, reprovision: &store.ReprovisionPolicy{}}, prev: assigned, custom: []string{"old-hub"}},
		{name: "unknown", target: allocationTarget{policy: "roundRobin"}, errCode: ErrorCodeAllocationPolicy},
		{name: "same hub again", target: allocationTarget{policy: "hashed", hubs: []string{"OLD-HUB"}}, prev: assigned, hubs: []string{"old-hub"}, sub: SubstatusReprovisioned},
		{name: "moved, default policy", target: allocationTarget{policy: "hashed", hubs: []string{"h2"}}, prev: assigned, hubs: []string{"h2"}, sub: SubstatusDeviceDataMigrated},
		{name: "moved, reset", target: allocationTarget{hubs: []string{"h2"}, reprovision: &store.ReprovisionPolicy{UpdateHubAssignment: true}}, prev: assigned, hubs: []string{"h2"}, sub: SubstatusDeviceDataReset},
		{name: "never", target: allocationTarget{hubs: []string{"h2"}, reprovision: &store.ReprovisionPolicy{}}, prev: assigned, hubs: []string{"old-hub"}, sub: SubstatusReprovisioned},
		{name: "never, unnamed combination", target: allocationTarget{hubs: []string{"h2"}, reprovision: &store.ReprovisionPolicy{MigrateDeviceData: true}}, prev: assigned, hubs: []string{"old-hub"}, sub: SubstatusReprovisioned},
		{name: "failed before: initial", target: allocationTarget{hubs: []string{"h2"}}, prev: &store.Registration{Status: store.RegistrationFailed}, hubs: []string{"h2"}, sub: SubstatusInitialAssignment},
	} {
		a := s.allocate(tc.target, "dev-1", tc.prev, snap)
		if a.errorCode != tc.errCode {
			t.Errorf("%s: errorCode %d, want %d (%+v)", tc.name, a.errorCode, tc.errCode, a)
			continue
		}
		if tc.errCode != 0 {
			if a.errorMessage == "" || a.hub != "" {
				t.Errorf("%s: failure without message or with hub: %+v", tc.name, a)
			}
			continue
		}
		if tc.custom != nil {
			if !a.custom || fmt.Sprint(a.linkedHubs) != fmt.Sprint(tc.custom) || a.hub != "" {
				t.Errorf("%s: %+v, want custom with linked hubs %v", tc.name, a, tc.custom)
			}
			continue
		}
		if !containsFold(tc.hubs, a.hub) || a.substatus != tc.sub {
			t.Errorf("%s: got %+v, want hub in %v and substatus %s", tc.name, a, tc.hubs, tc.sub)
		}
		if tc.prev != nil && tc.prev.Status == store.RegistrationAssigned && (a.prevHub != "old-hub" || a.prevDeviceID != "old-dev") {
			t.Errorf("%s: previous assignment not kept: %+v", tc.name, a)
		}
	}
	empty := &Service{}
	if a := empty.allocate(allocationTarget{policy: "hashed"}, "dev-1", nil, snapshotOf(empty)); a.errorCode != ErrorCodeNoHub {
		t.Errorf("no hubs anywhere: %+v", a)
	}
}

// TestAllocateLinkedHubs: hashing uses the linked hubs' weights, leaves
// out hubs that do not take part in allocation (which a static
// enrollment may still name), adds the service-wide hubs that are not
// linked, and drops a placeholder once a hub is linked.
func TestAllocateLinkedHubs(t *testing.T) {
	no := false
	s := &Service{cfg: Config{Hubs: []string{"svc-1", "heavy"}}}
	snap := snapshotOf(s,
		&store.LinkedHub{Name: "heavy", AllocationWeight: 1000},
		&store.LinkedHub{Name: "light", AllocationWeight: 1},
		&store.LinkedHub{Name: "out", ApplyAllocationPolicy: &no})
	want := []allocator.Hub{{Name: "heavy", Weight: 1000}, {Name: "light", Weight: 1}, {Name: "svc-1", Weight: 1}}
	if fmt.Sprint(snap.pool) != fmt.Sprint(want) {
		t.Fatalf("pool %v, want %v", snap.pool, want)
	}
	counts := map[string]int{}
	for i := range 2000 {
		a := s.allocate(allocationTarget{}, fmt.Sprint("dev-", i), nil, snap)
		counts[a.hub]++
	}
	if counts["out"] != 0 || counts["heavy"] < 1900 {
		t.Fatalf("weights not applied: %v", counts)
	}
	if a := s.allocate(allocationTarget{policy: "hashed", hubs: []string{"out"}}, "d", nil, snap); a.errorCode != ErrorCodeNoHub {
		t.Fatalf("hashed across a hub out of allocation: %+v", a)
	}
	if a := s.allocate(allocationTarget{policy: "static", hubHostName: "out"}, "d", nil, snap); a.hub != "out" {
		t.Fatalf("static to a hub out of allocation: %+v", a)
	}
	ph := &Service{cfg: Config{Hubs: []string{"hub.localdomain"}, PlaceholderHubs: true}}
	if p := snapshotOf(ph).pool; len(p) != 1 || p[0].Name != "hub.localdomain" {
		t.Fatalf("placeholder without linked hubs: %v", p)
	}
	if p := snapshotOf(ph, &store.LinkedHub{Name: "real"}).pool; len(p) != 1 || p[0].Name != "real" {
		t.Fatalf("placeholder with a linked hub: %v", p)
	}
}

// TestReallocationMovesOnlyToNewHub: with a hub added to an enrollment's
// hubs, a device that registers again moves only if the new hub wins it
// (weighted rendezvous), with the policy's substatus; the others stay,
// reprovisioned to their hub.
func TestReallocationMovesOnlyToNewHub(t *testing.T) {
	s := &Service{}
	snap := snapshotOf(s)
	before := allocationTarget{policy: "hashed", hubs: []string{"h1", "h2"}}
	after := allocationTarget{policy: "hashed", hubs: []string{"h1", "h2", "h3"}}
	moved := 0
	for i := range 600 {
		id := fmt.Sprint("dev-", i)
		first := s.allocate(before, id, nil, snap)
		prev := &store.Registration{Status: store.RegistrationAssigned, AssignedHub: first.hub}
		again := s.allocate(after, id, prev, snap)
		switch {
		case again.hub == first.hub && again.substatus == SubstatusReprovisioned:
		case again.hub == "h3" && again.substatus == SubstatusDeviceDataMigrated:
			moved++
		default:
			t.Fatalf("%s: %s then %+v", id, first.hub, again)
		}
	}
	if moved < 120 || moved > 280 {
		t.Fatalf("%d of 600 moved to the third hub", moved)
	}
}
