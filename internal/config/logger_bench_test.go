package config

import (
	"io"
	"log/slog"
	"testing"
	"time"
)

// BenchmarkJSONLogProvisioning logs what dpsd logs at info level for one
// TPM provisioning (two connections, four answered requests with their
// elapsed time, the challenge, authentication and registration lines),
// through slog's JSON handler as it is ("plain", durations as integer
// nanoseconds) and as Config.Logger builds it (durations as text).
func BenchmarkJSONLogProvisioning(b *testing.B) {
	for _, c := range []struct {
		name string
		h    func() slog.Handler
	}{
		{"plain", func() slog.Handler { return slog.NewJSONHandler(io.Discard, nil) }},
		{"durations-as-text", func() slog.Handler { return durationHandler{slog.NewJSONHandler(io.Discard, nil)} }},
	} {
		b.Run(c.name, func(b *testing.B) {
			log := slog.New(c.h())
			for b.Loop() {
				for conn := range 2 {
					cl := log.With("trackingId", "0f8fad5b-d9cb-469f-a165-70867728950e", "clientId", "dev-1", "remote", "127.0.0.1:50000", "listener", "tcp")
					cl.Info("connected", "restricted", conn == 0)
					for req := range 2 {
						rl := log.With("trackingId", "1f8fad5b-d9cb-469f-a165-70867728950e", "registrationId", "dev-1", "request", "register", "connTrackingId", "0f8fad5b")
						rl.Info("answered", "status", 202+req, "elapsed", 1500*time.Microsecond)
					}
					cl.Info("disconnected", "registrationId", "dev-1", "cause", "EOF")
				}
				log.Info("tpm challenge issued", "registrationId", "dev-1")
				log.Info("authenticated", "registrationId", "dev-1", "method", "tpm")
				log.Info("registration", slog.Group("audit", "who", "dev-1", "attestation", "tpm", "action", "assigned",
					"assignedHub", "hub1.example.com", "deviceId", "dev-1", "at", time.Unix(1700000000, 0)))
			}
		})
	}
}
