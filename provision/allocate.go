package provision

// Hub allocation, decided here and nowhere else. Policies as in DPS:
// static (the enrollment's iotHubHostName, or its only hub), hashed
// (weighted rendezvous hashing, allocator.Hashed, across the enrollment's
// iotHubs, else the service-wide pool of hubs.go), geoLatency (treated as
// hashed: this service has no latency data), custom (a webhook decides
// among the hubs the request lists: custom.go). Linked hubs whose
// applyAllocationPolicy is false are left out of hashing (an enrollment
// may still name one as its static hub, and a webhook may be offered it
// through the enrollment's iotHubs).
//
// Re-registration: a device whose previous registration is assigned is
// allocated again, as in DPS, and moves when the allocation gives another
// hub and its reprovisionPolicy.updateHubAssignment is true (the default
// when the enrollment has no policy). With updateHubAssignment false
// ("never reprovision") it keeps its hub. Substatus (the cloud's names,
// dpsd's reading where the cloud documents none):
//
//   - initialAssignment: no previous assignment;
//   - reprovisionedToInitialAssignment: assigned again to the hub it has
//     (the allocation gave the same hub, or the policy is never);
//   - deviceDataMigrated: moved, policy migrate (migrateDeviceData true);
//   - deviceDataReset: moved, policy reset (migrateDeviceData false).
//
// The hub key is the device's and is kept in every case.

import (
	"strings"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/store"
)

// Registration substatuses (registrationState.substatus).
const (
	// SubstatusInitialAssignment: the device got its first hub.
	SubstatusInitialAssignment = "initialAssignment"
	// SubstatusDeviceDataMigrated: the device moved hub with its data
	// (the twin's tags and desired properties) copied from the old one.
	SubstatusDeviceDataMigrated = "deviceDataMigrated"
	// SubstatusDeviceDataReset: the device moved hub and starts there from
	// its initial twin.
	SubstatusDeviceDataReset = "deviceDataReset"
	// SubstatusReprovisioned: the device registered again and keeps the
	// hub it had (reprovisionedToInitialAssignment).
	SubstatusReprovisioned = "reprovisionedToInitialAssignment"
)

// allocationTarget is what an enrollment or group says about allocation.
type allocationTarget struct {
	policy      string
	hubHostName string
	hubs        []string
	reprovision *store.ReprovisionPolicy
	custom      *store.CustomAllocationDefinition
}

// allocation is the outcome: a hub and substatus, or an error code and
// message, or (custom) the hubs a webhook may choose from.
type allocation struct {
	hub          string
	substatus    string
	errorCode    int
	errorMessage string
	// custom: a webhook decides among linkedHubs (settle applies its answer).
	custom     bool
	linkedHubs []string
	// prevHub and prevDeviceID are the device's assignment before this
	// registration ("" on an initial assignment).
	prevHub, prevDeviceID string
	// never: the policy keeps the device on prevHub.
	never bool
	// migrate: a move copies the device's data (else it is reset).
	migrate bool
}

// moved reports whether the allocation moves the device to another hub.
func (a *allocation) moved() bool {
	return a.prevHub != "" && a.hub != "" && !strings.EqualFold(a.hub, a.prevHub)
}

// allocate decides where regID goes. prev is the device's previous
// registration record, nil if none.
func (s *Service) allocate(t allocationTarget, regID string, prev *store.Registration, snap *hubSnapshot) allocation {
	a := allocation{migrate: t.reprovision == nil || t.reprovision.MigrateDeviceData}
	if prev != nil && prev.Status == store.RegistrationAssigned && prev.AssignedHub != "" {
		a.prevHub, a.prevDeviceID = prev.AssignedHub, prev.DeviceID
		a.never = t.reprovision != nil && !t.reprovision.UpdateHubAssignment
	}
	var cands []allocator.Hub
	switch strings.ToLower(t.policy) {
	case "custom":
		a.custom = true
		switch {
		case a.never:
			a.linkedHubs = []string{a.prevHub}
		case len(trimmed(t.hubs)) > 0:
			a.linkedHubs = trimmed(t.hubs)
		case t.hubHostName != "":
			a.linkedHubs = []string{t.hubHostName}
		default:
			for _, h := range snap.pool {
				a.linkedHubs = append(a.linkedHubs, h.Name)
			}
		}
		if len(a.linkedHubs) == 0 {
			return noHub(a)
		}
		return a
	case "static":
		if t.hubHostName != "" {
			cands = []allocator.Hub{{Name: t.hubHostName}}
		} else if h := trimmed(t.hubs); len(h) == 1 {
			cands = []allocator.Hub{{Name: h[0]}}
		}
	case "":
		// No policy: an enrollment naming one hub is static, else hashed.
		if t.hubHostName != "" {
			cands = []allocator.Hub{{Name: t.hubHostName}}
			break
		}
		cands = hashedCandidates(t, snap)
	case "hashed", "geolatency":
		cands = hashedCandidates(t, snap)
	default:
		a.errorCode, a.errorMessage = ErrorCodeAllocationPolicy, "Unknown allocation policy "+t.policy
		return a
	}
	if len(cands) == 0 && !a.never {
		return noHub(a)
	}
	return a.settle(allocator.Hashed(cands, regID))
}

// noHub is a allocated with no hub to give.
func noHub(a allocation) allocation {
	a.errorCode, a.errorMessage = ErrorCodeNoHub, "No IoT hub is available for this device"
	return a
}

// settle completes an allocation with the hub chosen: a re-registration
// under a never policy keeps its hub; the substatus follows.
func (a allocation) settle(hub string) allocation {
	a.hub = hub
	switch {
	case a.prevHub == "":
		a.substatus = SubstatusInitialAssignment
	case a.never || strings.EqualFold(hub, a.prevHub):
		a.hub, a.substatus = a.prevHub, SubstatusReprovisioned
	case a.migrate:
		a.substatus = SubstatusDeviceDataMigrated
	default:
		a.substatus = SubstatusDeviceDataReset
	}
	return a
}

// hashedCandidates are the hubs a hashed allocation chooses among, with
// their weights: the enrollment's iotHubs, else its single hub, else the
// service-wide pool; linked hubs that do not take part in allocation are
// left out.
func hashedCandidates(t allocationTarget, snap *hubSnapshot) []allocator.Hub {
	names := trimmed(t.hubs)
	if len(names) == 0 && t.hubHostName != "" {
		names = []string{t.hubHostName}
	}
	if len(names) == 0 {
		return snap.pool
	}
	out := make([]allocator.Hub, 0, len(names))
	for _, n := range names {
		if w, ok := snap.weight(n); ok {
			out = append(out, allocator.Hub{Name: n, Weight: w})
		}
	}
	return out
}

// trimmed returns the non-empty, trimmed entries of list.
func trimmed(list []string) []string {
	var out []string
	for _, h := range list {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

// containsFold reports whether list holds s, ignoring case (host names).
func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}
