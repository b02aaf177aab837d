package allocator

import (
	"crypto/sha256"
	"encoding/binary"
	"math"
	"strings"
)

// Hub is a hub that takes part in hashed allocation, with its weight
// (1-1000; anything below 1 counts as 1).
type Hub struct {
	Name   string
	Weight int
}

// Hashed returns the hub of regID among hubs by weighted rendezvous
// hashing, "" when hubs is empty. Each hub scores
// -weight / ln(u), where u in (0, 1) is the first 64 bits of
// SHA-256("dpsd hub allocation v1" 0 lower(regID) 0 lower(hub)); the
// highest score wins, so a hub's share of devices is its weight over the
// sum of weights. The choice depends only on the registration id and the
// hubs with their weights: it is stable while they are unchanged, adding a
// hub moves only the devices it now wins, removing one moves only its own
// devices, and changing one hub's weight moves devices to or from that hub
// only. With equal weights the winner is the hub with the highest hash,
// the unweighted rendezvous hashing of earlier versions, so their
// assignments stay. Ties (never in practice) go to the higher hash, then
// the lexically smaller lowercase name.
func Hashed(hubs []Hub, regID string) string {
	id := strings.ToLower(regID)
	best := -1
	var bestScore float64
	var bestHash uint64
	bestLower := ""
	equal := true
	for _, h := range hubs[min(1, len(hubs)):] {
		if weight(h) != weight(hubs[0]) {
			equal = false
			break
		}
	}
	for i, h := range hubs {
		lh := strings.ToLower(h.Name)
		sum := sha256.Sum256([]byte("dpsd hub allocation v1\x00" + id + "\x00" + lh))
		hash := binary.BigEndian.Uint64(sum[:8])
		score := 0.0
		if !equal {
			// u in (0, 1): the hash's top 53 bits, offset by half a step so
			// that neither 0 nor 1 occurs.
			u := (float64(hash>>11) + 0.5) / (1 << 53)
			score = -float64(weight(h)) / math.Log(u)
		}
		better := best < 0 || score > bestScore ||
			(score == bestScore && (hash > bestHash || (hash == bestHash && lh < bestLower)))
		if better {
			best, bestScore, bestHash, bestLower = i, score, hash, lh
		}
	}
	if best < 0 {
		return ""
	}
	return hubs[best].Name
}

func weight(h Hub) int { return max(h.Weight, 1) }
