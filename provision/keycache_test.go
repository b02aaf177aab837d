package provision

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"testing"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/softtpm"
)

func TestTPMKeyCache(t *testing.T) {
	dev, err := softtpm.NewDevice(rand.Reader, softtpm.ECCP256)
	if err != nil {
		t.Fatal(err)
	}
	other, err := softtpm.NewDevice(rand.Reader, softtpm.ECCP256)
	if err != nil {
		t.Fatal(err)
	}
	keys := func(d *softtpm.Device) *TPMKeys {
		return &TPMKeys{EndorsementKey: base64.StdEncoding.EncodeToString(d.EK.Public()),
			StorageRootKey: base64.StdEncoding.EncodeToString(d.SRK.Public())}
	}
	c := newTPMKeyCache()
	ek1, srk1, err := c.parse("dev-1", keys(dev))
	if err != nil {
		t.Fatal(err)
	}
	ek2, srk2, err := c.parse("dev-1", keys(dev))
	if err != nil || ek2 != ek1 || srk2 != srk1 {
		t.Fatalf("second parse of the same keys was not served from the cache (%v)", err)
	}
	// Other keys for the same id, or the same keys for another id, are parsed.
	ek3, _, err := c.parse("dev-1", keys(other))
	if err != nil || ek3 == ek1 || !ek3.Equal(mustParse(t, other.EK.Public())) {
		t.Fatalf("other keys: %v", err)
	}
	if ek4, _, _ := c.parse("dev-2", keys(dev)); ek4 == ek1 {
		t.Fatal("another registration id shared a cache entry")
	}
	// Bad keys are refused and not cached.
	bad := keys(dev)
	bad.StorageRootKey = "AAAA"
	if _, _, err := c.parse("dev-3", bad); err == nil {
		t.Fatal("a malformed SRK was accepted")
	}
	if _, _, err := c.parse("dev-3", bad); err == nil {
		t.Fatal("a malformed SRK was accepted from the cache")
	}
	// The cache is bounded.
	for i := range tpmKeyCacheSize + 10 {
		if _, _, err := c.parse(fmt.Sprint("many-", i), keys(dev)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(c.m); n > tpmKeyCacheSize {
		t.Fatalf("cache holds %d entries, bound %d", n, tpmKeyCacheSize)
	}
}

func mustParse(t *testing.T, b []byte) *attest.Public {
	t.Helper()
	p, err := attest.ParsePublic(b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
