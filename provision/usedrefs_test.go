package provision

import (
	"errors"
	"testing"
	"time"
)

func testRef(i int, expires time.Time) challengeRef {
	r := challengeRef{expires: expires}
	r.nonce[0], r.nonce[1], r.nonce[2] = byte(i), byte(i>>8), byte(i>>16)
	return r
}

func TestUsedRefsOnceUntilExpiry(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	u := newUsedRefs(10)
	a := testRef(1, now.Add(time.Minute))
	if err := u.use(a, now); err != nil {
		t.Fatal(err)
	}
	if err := u.use(a, now.Add(59*time.Second)); !errors.Is(err, errChallengeUsed) {
		t.Fatalf("second use before expiry: %v", err)
	}
	// Same nonce, other expiry: the nonce is what is remembered.
	if err := u.use(testRef(1, now.Add(time.Hour)), now); !errors.Is(err, errChallengeUsed) {
		t.Fatalf("same nonce, other expiry: %v", err)
	}
	if err := u.use(testRef(2, now.Add(time.Minute)), now); err != nil {
		t.Fatal(err)
	}
	// At expiry both are forgotten (an expired reference never reaches use).
	if err := u.use(testRef(3, now.Add(2*time.Minute)), now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if n := len(u.set); n != 1 {
		t.Fatalf("%d remembered after expiry, want 1", n)
	}
}

func TestUsedRefsFullRefusesUntilExpiry(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	u := newUsedRefs(3)
	for i := range 3 {
		if err := u.use(testRef(i, now.Add(time.Minute)), now); err != nil {
			t.Fatal(err)
		}
	}
	if err := u.use(testRef(9, now.Add(time.Minute)), now); !errors.Is(err, errTooManyUsedChallenges) {
		t.Fatalf("use when full: %v", err)
	}
	// Every entry is still refused as used while full.
	if err := u.use(testRef(0, now.Add(time.Minute)), now); !errors.Is(err, errChallengeUsed) {
		t.Fatalf("reuse when full: %v", err)
	}
	if err := u.use(testRef(9, now.Add(2*time.Minute)), now.Add(time.Minute)); err != nil {
		t.Fatalf("use after the others expired: %v", err)
	}
}

func TestUsedRefsManyStayBounded(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	u := newUsedRefs(1000)
	// 100,000 references over 100,000 s, each living 100 s: at most ~100
	// are live at once and the arrival slice is compacted as they expire.
	for i := range 100_000 {
		at := now.Add(time.Duration(i) * time.Second)
		if err := u.use(testRef(i, at.Add(100*time.Second)), at); err != nil {
			t.Fatalf("use %d: %v", i, err)
		}
		if i%997 == 0 {
			if err := u.use(testRef(i, at.Add(100*time.Second)), at.Add(50*time.Second)); !errors.Is(err, errChallengeUsed) {
				t.Fatalf("reuse %d: %v", i, err)
			}
		}
	}
	if n := len(u.set); n > 101 {
		t.Fatalf("%d remembered, want at most 101", n)
	}
	if c := cap(u.order); c > 1024 {
		t.Fatalf("arrival slice capacity %d: not compacted", c)
	}
}

func BenchmarkUsedRefs(b *testing.B) {
	now := time.Unix(1_000_000, 0)
	u := newUsedRefs(DefaultMaxUsedChallenges)
	i := 0
	for b.Loop() {
		i++
		if err := u.use(testRef(i, now.Add(10*time.Minute)), now); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 0 {
			now = now.Add(time.Second)
		}
	}
}
