package ratelimit

import (
	"net/netip"
	"testing"
)

// TestAddressKey: IPv4 counts per address, IPv6 per prefix (default /64),
// with or without a port, mapped and zoned forms included.
func TestAddressKey(t *testing.T) {
	cases := []struct {
		remote string
		bits   int
		want   string
	}{
		{"127.0.0.1:1883", 64, "127.0.0.1"},
		{"127.0.0.2", 64, "127.0.0.2"},
		{"[::ffff:192.0.2.7]:443", 64, "192.0.2.7"},
		{"[::1]:8883", 64, "::/64"},
		{"::1", 128, "::1/128"},
		{"[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:8883", 64, "2001:db8:1:2::/64"},
		{"[2001:db8:1:2::1]:1", 64, "2001:db8:1:2::/64"},
		{"[2001:db8:1:3::1]:1", 64, "2001:db8:1:3::/64"},
		{"[2001:db8:1:3::1]:1", 48, "2001:db8:1::/48"},
		{"[2001:db8:1:3::1]:1", 0, "2001:db8:1:3::/64"},   // out of range: default
		{"[2001:db8:1:3::1]:1", 129, "2001:db8:1:3::/64"}, // out of range: default
		{"[fe80::1%eth0]:1", 64, "fe80::/64"},
		{"[fe80::1%eth1]:1", 64, "fe80::/64"},
		{"pipe", 64, "pipe"},
		{"", 64, ""},
	}
	for _, c := range cases {
		if got := AddressKey(c.remote, c.bits); got != c.want {
			t.Errorf("AddressKey(%q, %d) = %q, want %q", c.remote, c.bits, got, c.want)
		}
	}
}

// TestLimiterKeyedByPrefix: two addresses of one /64 share a budget, another
// /64 has its own.
func TestLimiterKeyedByPrefix(t *testing.T) {
	l := New(1, 1, nil)
	if ok, _ := l.Allow(AddressKey("[2001:db8::1]:1000", 64)); !ok {
		t.Fatal("first address refused")
	}
	if ok, _ := l.Allow(AddressKey("[2001:db8::ffff:2]:1001", 64)); ok {
		t.Fatal("a second address of the same /64 got its own budget")
	}
	if ok, _ := l.Allow(AddressKey("[2001:db8:0:1::1]:1000", 64)); !ok {
		t.Fatal("an address of another /64 was refused")
	}
	c := NewCounter(1)
	if !c.Acquire(AddressKey("[2001:db8::1]:1", 64)) || c.Acquire(AddressKey("[2001:db8::2]:2", 64)) {
		t.Fatal("the counter does not count a /64 as one address")
	}
}

// FuzzAddressKey: any input gives a key without panicking; an IP address's
// key is the same whatever its port, and every address inside an IPv6 key's
// prefix maps to that key.
func FuzzAddressKey(f *testing.F) {
	for _, s := range []string{"127.0.0.1:1", "[::1]:2", "[2001:db8::1%x]:3", "::ffff:1.2.3.4", "x:y:z", ""} {
		f.Add(s, 64)
	}
	f.Fuzz(func(t *testing.T, remote string, bits int) {
		k := AddressKey(remote, bits)
		ip, err := netip.ParseAddr(remote)
		if err != nil {
			return
		}
		if k2 := AddressKey(netip.AddrPortFrom(ip.WithZone(""), 9).String(), bits); k2 != k {
			t.Fatalf("%q: key %q, with a port %q", remote, k, k2)
		}
		if p, err := netip.ParsePrefix(k); err == nil && !p.Contains(ip.Unmap().WithZone("")) {
			t.Fatalf("%q: key %q does not contain it", remote, k)
		}
	})
}

// BenchmarkAddressKey: the key is computed once per accepted connection and
// once per CONNECT.
func BenchmarkAddressKey(b *testing.B) {
	for _, remote := range []string{"192.0.2.10:40000", "[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:40000"} {
		b.Run(remote, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = AddressKey(remote, 64)
			}
		})
	}
}
