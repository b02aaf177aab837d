package config

import (
	"bytes"
	"testing"
	"time"
)

// TestDeviceLimitSettings: the per-device poll and register limits have safe
// defaults (the cloud's 5 polls per 10 s) and follow flags and environment.
func TestDeviceLimitSettings(t *testing.T) {
	c := Default()
	if c.PollsPerDevice != 5 || c.PollWindow != 10*time.Second || c.RegistersPerDevice != 10 || c.RegisterWindow != time.Minute {
		t.Fatalf("defaults: polls %d/%v registers %d/%v", c.PollsPerDevice, c.PollWindow, c.RegistersPerDevice, c.RegisterWindow)
	}
	e := map[string]string{"DPSD_POLLS_PER_DEVICE": "7", "DPSD_REGISTER_WINDOW": "2m"}
	c, err := Load("serve", "", []string{"-registers-per-device", "-1", "-poll-window=30s"}, env(e), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.PollsPerDevice != 7 || c.PollWindow != 30*time.Second || c.RegistersPerDevice != -1 || c.RegisterWindow != 2*time.Minute {
		t.Fatalf("loaded: polls %d/%v registers %d/%v", c.PollsPerDevice, c.PollWindow, c.RegistersPerDevice, c.RegisterWindow)
	}
	if _, err := Load("serve", "", []string{"-poll-window", "fast"}, env(nil), &bytes.Buffer{}); err == nil {
		t.Fatal("a bad poll-window was accepted")
	}
}

// TestRestrictedSessionSettings: one address may hold 32 restricted
// sessions for at most 60 s by default; both follow flags and environment.
func TestRestrictedSessionSettings(t *testing.T) {
	if c := Default(); c.RestrictedPerAddress != 32 || c.RestrictedLifetime != time.Minute {
		t.Fatalf("defaults: %d per address, lifetime %v", c.RestrictedPerAddress, c.RestrictedLifetime)
	}
	c, err := Load("serve", "", []string{"-restricted-sessions-per-address", "-1"},
		env(map[string]string{"DPSD_RESTRICTED_LIFETIME": "2m"}), &bytes.Buffer{})
	if err != nil || c.RestrictedPerAddress != -1 || c.RestrictedLifetime != 2*time.Minute {
		t.Fatalf("loaded: %d %v %v", c.RestrictedPerAddress, c.RestrictedLifetime, err)
	}
}

// TestAuthFailureSettings: a burst of 20 refused CONNECTs per address, then
// 60 a minute, by default; both follow flags and the config file.
func TestAuthFailureSettings(t *testing.T) {
	if c := Default(); c.AuthFailureRate != 60 || c.AuthFailureBurst != 20 {
		t.Fatalf("defaults: %d/min burst %d", c.AuthFailureRate, c.AuthFailureBurst)
	}
	c, err := Load("serve", "", []string{"-auth-failure-rate-per-address", "-1", "-auth-failure-burst-per-address", "5"}, env(nil), &bytes.Buffer{})
	if err != nil || c.AuthFailureRate != -1 || c.AuthFailureBurst != 5 {
		t.Fatalf("loaded: %d %d %v", c.AuthFailureRate, c.AuthFailureBurst, err)
	}
}

// TestAPIConnectionSettings: the HTTPS listener has per-address limits of
// its own, by default those of the MQTT listeners.
func TestAPIConnectionSettings(t *testing.T) {
	if c := Default(); c.APIConnsPerAddress != 1000 || c.APIConnRatePerAddress != 1200 {
		t.Fatalf("defaults: %d, %d/min", c.APIConnsPerAddress, c.APIConnRatePerAddress)
	}
	c, err := Load("serve", "", []string{"-api-conns-per-address", "50"},
		env(map[string]string{"DPSD_API_CONN_RATE_PER_ADDRESS": "-1"}), &bytes.Buffer{})
	if err != nil || c.APIConnsPerAddress != 50 || c.APIConnRatePerAddress != -1 {
		t.Fatalf("loaded: %d %d %v", c.APIConnsPerAddress, c.APIConnRatePerAddress, err)
	}
}

// TestIPv6PrefixLen: per-address limits count an IPv6 /64 by default; the
// length follows the environment and must lie in 1..128.
func TestIPv6PrefixLen(t *testing.T) {
	if c := Default(); c.IPv6PrefixLen != 64 {
		t.Fatalf("default ipv6-prefix-len %d", c.IPv6PrefixLen)
	}
	c, err := Load("serve", "", nil, env(map[string]string{"DPSD_IPV6_PREFIX_LEN": "56"}), &bytes.Buffer{})
	if err != nil || c.IPv6PrefixLen != 56 {
		t.Fatalf("from env: %d %v", c.IPv6PrefixLen, err)
	}
	for _, bad := range []string{"0", "129", "-1"} {
		if _, err := Load("serve", "", []string{"-ipv6-prefix-len", bad}, env(nil), &bytes.Buffer{}); err == nil {
			t.Fatalf("ipv6-prefix-len %s accepted", bad)
		}
	}
}
