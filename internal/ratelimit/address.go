package ratelimit

import (
	"net"
	"net/netip"
)

// DefaultIPv6PrefixLen is the IPv6 prefix that counts as one address for
// per-address limits: a /64 is the smallest network a provider hands out,
// and one host can take any address inside it.
const DefaultIPv6PrefixLen = 64

// AddressKey returns the key under which every per-address limit counts a
// remote address ("host:port" or a bare host): an IPv4 address (also an
// IPv4-mapped IPv6 one) is its own key, an IPv6 address counts as its
// network of ipv6PrefixLen bits ("2001:db8:1:2::/64"), so that a host
// cannot escape the limits by moving around its /64. A prefix length
// outside 1..128 takes DefaultIPv6PrefixLen. A zone is dropped. A host that
// is not an IP address is its own key.
func AddressKey(remote string, ipv6PrefixLen int) string {
	host := remote
	if h, _, err := net.SplitHostPort(remote); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return ip.String()
	}
	if ipv6PrefixLen < 1 || ipv6PrefixLen > 128 {
		ipv6PrefixLen = DefaultIPv6PrefixLen
	}
	p, err := ip.Prefix(ipv6PrefixLen)
	if err != nil {
		return ip.String()
	}
	return p.String()
}
