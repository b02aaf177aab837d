package provision

// Hub allocation. Policies as in DPS: static (the enrollment's
// iotHubHostName), hashed (across the enrollment's iotHubs, else the
// service's Hubs), geoLatency (treated as hashed: this service has no
// latency data), custom (webhooks: not supported, the registration fails).
// Hashed allocation is rendezvous hashing of the lowercase registration id:
// stable while the hub list is unchanged, spread evenly across hubs, and a
// hub's removal moves only the devices that were on it.
//
// Re-registration: a device already assigned keeps its hub while that hub is
// still a candidate (so adding hubs moves nobody). When its hub is no longer
// a candidate, it moves only if reprovisionPolicy.updateHubAssignment (true
// when the enrollment has no policy, as in DPS); substatus then says
// deviceDataMigrated or deviceDataReset. The hub key is the device's and is
// kept in every case.

import (
	"crypto/sha256"
	"encoding/binary"
	"strings"

	"github.com/tpmdps/dpsd/store"
)

// Registration substatuses (registrationState.substatus).
const (
	// SubstatusInitialAssignment: the device got (or kept) its hub.
	SubstatusInitialAssignment = "initialAssignment"
	// SubstatusDeviceDataMigrated: the device moved hub; its data is to be migrated.
	SubstatusDeviceDataMigrated = "deviceDataMigrated"
	// SubstatusDeviceDataReset: the device moved hub and starts afresh there.
	SubstatusDeviceDataReset = "deviceDataReset"
)

// allocationTarget is what an enrollment or group says about allocation.
type allocationTarget struct {
	policy      string
	hubHostName string
	hubs        []string
	reprovision *store.ReprovisionPolicy
}

// allocation is the outcome: a hub and substatus, or an error code and message.
type allocation struct {
	hub          string
	substatus    string
	errorCode    int
	errorMessage string
}

// allocate picks the hub for regID. prev is the device's previous
// registration record, nil if none.
func (s *Service) allocate(t allocationTarget, regID string, prev *store.Registration) allocation {
	var candidates []string
	switch strings.ToLower(t.policy) {
	case "custom":
		return allocation{errorCode: ErrorCodeCustomAllocation,
			errorMessage: "Custom allocation is not supported by this provisioning service"}
	case "static":
		if t.hubHostName != "" {
			candidates = []string{t.hubHostName}
		} else if len(t.hubs) == 1 {
			candidates = t.hubs
		}
	case "":
		// No policy: an enrollment naming one hub is static, else hashed.
		if t.hubHostName != "" {
			candidates = []string{t.hubHostName}
			break
		}
		candidates = s.hashedCandidates(t)
	case "hashed", "geolatency":
		candidates = s.hashedCandidates(t)
	default:
		return allocation{errorCode: ErrorCodeAllocationPolicy,
			errorMessage: "Unknown allocation policy " + t.policy}
	}
	if len(candidates) == 0 {
		return allocation{errorCode: ErrorCodeNoHub, errorMessage: "No IoT hub is available for this device"}
	}
	if prev != nil && prev.Status == store.RegistrationAssigned && prev.AssignedHub != "" {
		if containsFold(candidates, prev.AssignedHub) ||
			(t.reprovision != nil && !t.reprovision.UpdateHubAssignment) {
			return allocation{hub: prev.AssignedHub, substatus: SubstatusInitialAssignment}
		}
		sub := SubstatusDeviceDataMigrated
		if t.reprovision != nil && !t.reprovision.MigrateDeviceData {
			sub = SubstatusDeviceDataReset
		}
		return allocation{hub: rendezvous(candidates, regID), substatus: sub}
	}
	return allocation{hub: rendezvous(candidates, regID), substatus: SubstatusInitialAssignment}
}

// hashedCandidates are the enrollment's hubs, else its single hub, else the service's.
func (s *Service) hashedCandidates(t allocationTarget) []string {
	var out []string
	for _, h := range t.hubs {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	switch {
	case len(out) > 0:
		return out
	case t.hubHostName != "":
		return []string{t.hubHostName}
	}
	return s.cfg.Hubs
}

// rendezvous returns the hub with the highest score
// SHA-256(label || 0 || lowercase(regID) || 0 || lowercase(hub)); ties (never
// in practice) go to the lexically smaller lowercase hub name.
func rendezvous(hubs []string, regID string) string {
	var best string
	var bestScore uint64
	bestLower := ""
	id := strings.ToLower(regID)
	for _, h := range hubs {
		lh := strings.ToLower(h)
		sum := sha256.Sum256([]byte("dpsd hub allocation v1\x00" + id + "\x00" + lh))
		score := binary.BigEndian.Uint64(sum[:8])
		if best == "" || score > bestScore || (score == bestScore && lh < bestLower) {
			best, bestScore, bestLower = h, score, lh
		}
	}
	return best
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
