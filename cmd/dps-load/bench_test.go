package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/cmd/dps-load/internal/loadgen"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
)

// BenchmarkProvisionInProcess runs dpsd and the load engine in one process,
// for CPU profiles of the server's hot path (go test -bench
// ProvisionInProcess -cpuprofile cpu.out ./cmd/dps-load; the client's own
// frames are in cmd/dps-load/internal/loadgen and softtpm). One op is one full
// provisioning; DPS_LOAD_KIND selects tpm-rsa (default), tpm-ecc or
// symmetric.
func BenchmarkProvisionInProcess(b *testing.B) {
	kind := loadgen.TPMRSA
	if k := os.Getenv("DPS_LOAD_KIND"); k != "" {
		var err error
		if kind, err = loadgen.ParseDeviceKind(k); err != nil {
			b.Fatal(err)
		}
	}
	s := dpsdtest.Start(b, dpsdtest.Options{RetryAfter: -1, Limits: broker.Limits{
		ConnectionsPerAddress: -1, ConnectionsPerAddressPerMinute: -1,
	}, HookLimits: hooks.Limits{
		RestrictedSessions: -1, RestrictedSessionsPerAddress: -1, AuthFailuresPerAddressPerMinute: -1, ChallengesPerConnection: -1, ChallengesPerAddressPerMinute: -1,
		ChallengesPerMinute: -1, RequestsPerConnectionPerMinute: -1, PollsPerDevice: -1, RegistersPerDevice: -1,
	}})
	spec := loadgen.FleetSpec{Prefix: "bench", KeyPool: 8}
	switch kind {
	case loadgen.TPMRSA:
		spec.TPMRSA = 200
	case loadgen.TPMECC:
		spec.TPMECC = 200
	default:
		spec.Symmetric = 200
	}
	devices, err := loadgen.NewFleet(spec)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, d := range devices {
		if _, err := s.Store.PutEnrollment(ctx, d.Enrollment(), ""); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	rep, err := loadgen.Run(ctx, loadgen.Config{Addr: s.TCPAddr, IDScope: s.IDScope, Devices: devices,
		Count: b.N, Concurrency: 50, Timeout: 30 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	if rep.Failed > 0 {
		b.Fatalf("%d failed: %v %s", rep.Failed, rep.Errors, rep.FirstError)
	}
	b.ReportMetric(rep.PerSecond, "prov/s")
}
