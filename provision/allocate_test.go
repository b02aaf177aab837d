package provision

import (
	"fmt"
	"testing"

	"github.com/tpmdps/dpsd/store"
)

func TestRendezvousStableAndSpread(t *testing.T) {
	hubs := []string{"hub-a.example", "hub-b.example", "hub-c.example"}
	counts := map[string]int{}
	const n = 3000
	for i := range n {
		id := fmt.Sprintf("device-%d", i)
		h := rendezvous(hubs, id)
		if h != rendezvous([]string{hubs[2], hubs[0], hubs[1]}, id) {
			t.Fatalf("%s: hub depends on list order", id)
		}
		if h != rendezvous(hubs, fmt.Sprintf("DEVICE-%d", i)) {
			t.Fatalf("%s: hub depends on id case", id)
		}
		counts[h]++
	}
	for _, h := range hubs {
		if counts[h] < n/3*8/10 || counts[h] > n/3*12/10 {
			t.Errorf("hub %s got %d of %d devices: %v", h, counts[h], n, counts)
		}
	}
	// Adding a hub moves devices only onto it.
	more := append(append([]string(nil), hubs...), "hub-d.example")
	for i := range n {
		id := fmt.Sprintf("device-%d", i)
		before, after := rendezvous(hubs, id), rendezvous(more, id)
		if before != after && after != "hub-d.example" {
			t.Fatalf("%s moved from %s to %s", id, before, after)
		}
	}
}

func TestAllocatePolicies(t *testing.T) {
	s := &Service{cfg: Config{Hubs: []string{"svc-1", "svc-2"}}}
	assigned := &store.Registration{Status: store.RegistrationAssigned, AssignedHub: "old-hub"}
	for _, tc := range []struct {
		name    string
		target  allocationTarget
		prev    *store.Registration
		hubs    []string // acceptable hubs
		sub     string
		errCode int
	}{
		{name: "static", target: allocationTarget{policy: "static", hubHostName: "h1", hubs: []string{"h2", "h3"}}, hubs: []string{"h1"}, sub: SubstatusInitialAssignment},
		{name: "static without hub", target: allocationTarget{policy: "static"}, errCode: ErrorCodeNoHub},
		{name: "implicit static", target: allocationTarget{hubHostName: "h1"}, hubs: []string{"h1"}, sub: SubstatusInitialAssignment},
		{name: "hashed enrollment hubs", target: allocationTarget{policy: "Hashed", hubs: []string{"h2", "h3"}}, hubs: []string{"h2", "h3"}, sub: SubstatusInitialAssignment},
		{name: "geoLatency as hashed", target: allocationTarget{policy: "geoLatency"}, hubs: []string{"svc-1", "svc-2"}, sub: SubstatusInitialAssignment},
		{name: "service hubs", target: allocationTarget{}, hubs: []string{"svc-1", "svc-2"}, sub: SubstatusInitialAssignment},
		{name: "custom", target: allocationTarget{policy: "custom", hubs: []string{"h2"}}, errCode: ErrorCodeCustomAllocation},
		{name: "unknown", target: allocationTarget{policy: "roundRobin"}, errCode: ErrorCodeAllocationPolicy},
		{name: "sticky", target: allocationTarget{policy: "hashed", hubs: []string{"h2", "OLD-HUB"}}, prev: assigned, hubs: []string{"old-hub"}, sub: SubstatusInitialAssignment},
		{name: "moved, default policy", target: allocationTarget{policy: "hashed", hubs: []string{"h2"}}, prev: assigned, hubs: []string{"h2"}, sub: SubstatusDeviceDataMigrated},
		{name: "moved, reset", target: allocationTarget{hubs: []string{"h2"}, reprovision: &store.ReprovisionPolicy{UpdateHubAssignment: true}}, prev: assigned, hubs: []string{"h2"}, sub: SubstatusDeviceDataReset},
		{name: "no update", target: allocationTarget{hubs: []string{"h2"}, reprovision: &store.ReprovisionPolicy{}}, prev: assigned, hubs: []string{"old-hub"}, sub: SubstatusInitialAssignment},
	} {
		a := s.allocate(tc.target, "dev-1", tc.prev)
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
		if !containsFold(tc.hubs, a.hub) || a.substatus != tc.sub {
			t.Errorf("%s: got %+v, want hub in %v and substatus %s", tc.name, a, tc.hubs, tc.sub)
		}
	}
	empty := &Service{}
	if a := empty.allocate(allocationTarget{policy: "hashed"}, "dev-1", nil); a.errorCode != ErrorCodeNoHub {
		t.Errorf("no hubs anywhere: %+v", a)
	}
}
