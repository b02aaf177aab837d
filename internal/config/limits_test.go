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
