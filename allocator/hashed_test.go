package allocator

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"testing"
)

// oldRendezvous is the unweighted choice of earlier versions
// (provision.rendezvous), kept here to show that equal weights choose
// exactly as it did.
func oldRendezvous(hubs []string, regID string) string {
	var best, bestLower string
	var bestScore uint64
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

func hubsOf(names []string, weights ...int) []Hub {
	out := make([]Hub, len(names))
	for i, n := range names {
		out[i] = Hub{Name: n, Weight: 1}
		if i < len(weights) {
			out[i].Weight = weights[i]
		}
	}
	return out
}

// TestHashedEqualWeightsKeepsEarlierAssignments: with equal weights (1 or
// any other), every device gets the hub the unweighted hashing of earlier
// versions gave it.
func TestHashedEqualWeightsKeepsEarlierAssignments(t *testing.T) {
	names := []string{"a.example.net", "B.example.net", "c.example.net", "d.example.net"}
	for i := range 5000 {
		id := fmt.Sprint("Device-", i)
		want := oldRendezvous(names, id)
		for _, w := range []int{1, 0, 7} {
			if got := Hashed(hubsOf(names, w, w, w, w), id); got != want {
				t.Fatalf("%s weight %d: %s, earlier versions %s", id, w, got, want)
			}
		}
	}
	if Hashed(nil, "x") != "" {
		t.Fatal("no hubs chose one")
	}
}

// TestHashedWeights: the share of devices follows the weights, and the
// choice is the same whatever the hubs' order.
func TestHashedWeights(t *testing.T) {
	names := []string{"h1", "h2", "h3"}
	weights := []int{1, 3, 6}
	counts := map[string]int{}
	const n = 30000
	for i := range n {
		id := fmt.Sprint("dev-", i)
		h := Hashed(hubsOf(names, weights...), id)
		rev := Hashed([]Hub{{"h3", 6}, {"h1", 1}, {"h2", 3}}, id)
		if h != rev {
			t.Fatalf("%s: %s in one order, %s in another", id, h, rev)
		}
		counts[h]++
	}
	for i, name := range names {
		want := float64(n) * float64(weights[i]) / 10
		if got := float64(counts[name]); math.Abs(got-want) > 0.05*n {
			t.Fatalf("%s got %v devices, want about %v (weights %v): %v", name, got, want, weights, counts)
		}
	}
}

// TestHashedStability: adding a hub moves only devices to it; removing
// one moves only its devices; changing one hub's weight moves devices only
// to or from that hub.
func TestHashedStability(t *testing.T) {
	base := []Hub{{"h1", 2}, {"h2", 5}, {"h3", 1}}
	added := append(append([]Hub(nil), base...), Hub{"h4", 3})
	removed := []Hub{{"h1", 2}, {"h3", 1}}
	reweighted := []Hub{{"h1", 2}, {"h2", 9}, {"h3", 1}}
	moved := 0
	for i := range 20000 {
		id := fmt.Sprint("dev-", i)
		before := Hashed(base, id)
		if after := Hashed(added, id); after != before {
			moved++
			if after != "h4" {
				t.Fatalf("%s moved from %s to %s when h4 was added", id, before, after)
			}
		}
		if after := Hashed(removed, id); after != before && before != "h2" {
			t.Fatalf("%s moved from %s to %s when h2 was removed", id, before, after)
		}
		if after := Hashed(reweighted, id); after != before && after != "h2" {
			t.Fatalf("%s moved from %s to %s when h2 got heavier", id, before, after)
		}
	}
	// h4 should win about 3/11 of the devices.
	if moved < 20000*3/11*8/10 || moved > 20000*3/11*12/10 {
		t.Fatalf("adding h4 (weight 3 of 11) moved %d of 20000", moved)
	}
}
