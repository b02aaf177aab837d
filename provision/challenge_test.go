package provision

import (
	"bytes"
	"crypto/rand"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestChallengeRefRoundTrip(t *testing.T) {
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	run := runID{1, 2, 3, 4, 5, 6, 7, 8}
	ref, err := newChallengeRef(rand.Reader, run, exp)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[A-Za-z0-9._~-]{1,128}$`).MatchString(ref) {
		t.Fatalf("ref %q has characters outside [A-Za-z0-9._~-] or is too long", ref)
	}
	if !isChallengeRef(ref) {
		t.Fatalf("isChallengeRef(%q) = false", ref)
	}
	got, err := parseChallengeRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	if !got.expires.Equal(exp) || got.run != run {
		t.Fatalf("expiry, run = %v, %x, want %v, %x", got.expires, got.run, exp, run)
	}
	ref2, err := newChallengeRef(rand.Reader, run, exp)
	if err != nil {
		t.Fatal(err)
	}
	if ref == ref2 {
		t.Fatal("two references for the same expiry are equal: no fresh randomness")
	}
}

func TestParseChallengeRefRejects(t *testing.T) {
	good, err := newChallengeRef(rand.Reader, runID{}, time.Unix(2000000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{
		"", "registration", "t2.", "t3." + good[3:], "t1." + good[3:], good + "A", good[:len(good)-1],
		good[:10] + "+" + good[11:], good[:10] + "=" + good[11:],
		"t2." + strings.Repeat("_", 43),                                  // expiry out of range
		"t1." + strings.Repeat("A", 32),                                  // a version 1 reference
		good[:10] + "\r" + good[10:], good[:10] + "\n" + good[11:] + "A", // the decoder would skip CR/LF
	} {
		if _, err := parseChallengeRef(ref); err == nil {
			t.Errorf("parseChallengeRef(%q) accepted", ref)
		}
	}
}

func TestChallengeKeyBinding(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	k := challengeKey(secret, "Dev-1", "t1.abc")
	if len(k) != 32 {
		t.Fatalf("key has %d bytes", len(k))
	}
	if !bytes.Equal(k, challengeKey(secret, "dev-1", "t1.abc")) {
		t.Error("key depends on the registration id's case")
	}
	for name, other := range map[string][]byte{
		"other id":     challengeKey(secret, "dev-2", "t1.abc"),
		"other ref":    challengeKey(secret, "dev-1", "t1.abd"),
		"other secret": challengeKey(bytes.Repeat([]byte{8}, 32), "dev-1", "t1.abc"),
		"shifted":      challengeKey(secret, "dev-1t", "1.abc"),
	} {
		if bytes.Equal(k, other) {
			t.Errorf("%s gives the same key", name)
		}
	}
}

func FuzzParseChallengeRef(f *testing.F) {
	good, err := newChallengeRef(rand.Reader, runID{9, 8, 7}, time.Unix(2000000000, 0))
	if err != nil {
		f.Fatal(err)
	}
	group, err := newGroupChallengeRef(rand.Reader, runID{9, 8, 7}, time.Unix(2000000000, 0), digestOfGroup("factory-a"))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{good, group, "", "t2.", "t3.", "registration", "t1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"t2." + strings.Repeat("A", 43), "t2." + strings.Repeat("_", 43), "t3." + strings.Repeat("A", 54)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		cr, err := parseChallengeRef(ref)
		if err != nil {
			return
		}
		// Only the canonical forms parse: 46 (57 for a group) characters of
		// the allowed set, whose decoded fields re-encode to the same
		// reference.
		var again string
		if cr.group {
			if len(ref) != 57 || !regexp.MustCompile(`^t3\.[A-Za-z0-9_-]{54}$`).MatchString(ref) {
				t.Fatalf("accepted non-canonical %q", ref)
			}
			again, err = newGroupChallengeRef(bytes.NewReader(cr.nonce[:]), cr.run, cr.expires, cr.groupDigest)
		} else {
			if len(ref) != 46 || !regexp.MustCompile(`^t2\.[A-Za-z0-9_-]{43}$`).MatchString(ref) {
				t.Fatalf("accepted non-canonical %q", ref)
			}
			again, err = newChallengeRef(bytes.NewReader(cr.nonce[:]), cr.run, cr.expires)
		}
		if err != nil {
			t.Fatal(err)
		}
		if again != ref {
			t.Fatalf("%q re-encodes as %q", ref, again)
		}
	})
}

func TestGroupChallengeRef(t *testing.T) {
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	run := runID{1, 2, 3, 4, 5, 6, 7, 8}
	d := digestOfGroup("Factory-A")
	if d != digestOfGroup("factory-a") || d == digestOfGroup("factory-b") {
		t.Fatal("group digest: case matters or two ids share one")
	}
	ref, err := newGroupChallengeRef(rand.Reader, run, exp, d)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^t3\.[A-Za-z0-9_-]{54}$`).MatchString(ref) || !isChallengeRef(ref) {
		t.Fatalf("group reference %q", ref)
	}
	got, err := parseChallengeRef(ref)
	if err != nil || !got.group || got.groupDigest != d || got.run != run || !got.expires.Equal(exp) {
		t.Fatalf("parse %q: %+v %v", ref, got, err)
	}
	// Neither form passes for the other.
	plain, _ := newChallengeRef(rand.Reader, run, exp)
	for _, bad := range []string{"t3." + plain[3:], "t2." + ref[3:], ref[:len(ref)-1], ref + "A"} {
		if _, err := parseChallengeRef(bad); err == nil {
			t.Errorf("parseChallengeRef(%q) accepted", bad)
		}
	}
	// A group key is bound to the group, and is not the key of the same
	// reference as an individual challenge.
	secret := bytes.Repeat([]byte{7}, 32)
	k := groupChallengeKey(secret, "Dev-1", ref, "Factory-A")
	if !bytes.Equal(k, groupChallengeKey(secret, "dev-1", ref, "factory-a")) {
		t.Error("group key depends on the case of the ids")
	}
	for name, other := range map[string][]byte{
		"other group":      groupChallengeKey(secret, "dev-1", ref, "factory-b"),
		"individual":       challengeKey(secret, "dev-1", ref),
		"shifted to group": groupChallengeKey(secret, "dev-1", ref+"\x00f", "actory-a"),
	} {
		if bytes.Equal(k, other) {
			t.Errorf("%s gives the same key", name)
		}
	}
}
