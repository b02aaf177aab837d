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
	ref, err := newChallengeRef(rand.Reader, exp)
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
	if !got.Equal(exp) {
		t.Fatalf("expiry = %v, want %v", got, exp)
	}
	ref2, err := newChallengeRef(rand.Reader, exp)
	if err != nil {
		t.Fatal(err)
	}
	if ref == ref2 {
		t.Fatal("two references for the same expiry are equal: no fresh randomness")
	}
}

func TestParseChallengeRefRejects(t *testing.T) {
	good, err := newChallengeRef(rand.Reader, time.Unix(2000000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{
		"", "registration", "t1.", "t2." + good[3:], good + "A", good[:len(good)-1],
		good[:10] + "+" + good[11:], good[:10] + "=" + good[11:],
		"t1." + strings.Repeat("_", 32),                                  // expiry out of range
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
	good, err := newChallengeRef(rand.Reader, time.Unix(2000000000, 0))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{good, "", "t1.", "registration", "t1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "t1.________________________________"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		exp, err := parseChallengeRef(ref)
		if err != nil {
			return
		}
		// Only the canonical form parses: 35 characters of the allowed set,
		// whose decoded expiry re-encodes to the same prefix.
		if len(ref) != 35 || !regexp.MustCompile(`^t1\.[A-Za-z0-9_-]{32}$`).MatchString(ref) {
			t.Fatalf("accepted non-canonical %q", ref)
		}
		again, err := newChallengeRef(bytes.NewReader(make([]byte, challengeNonceSize)), exp)
		if err != nil {
			t.Fatal(err)
		}
		// "t1." and 10 base64 characters carry the first 60 bits of the expiry.
		if again[:13] != ref[:13] {
			t.Fatalf("expiry of %q re-encodes as %q", ref, again)
		}
	})
}
