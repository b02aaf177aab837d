package provision

import (
	"crypto/x509"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/store"
)

// processCPU returns the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process CPU time per iteration since start
// (cpu-µs/op): unlike ns/op it leaves out waiting (fsync) and counts the
// work of every goroutine.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(processCPU(b)-start)/float64(b.N)/1e3, "cpu-µs/op")
}

// groupCounts are the numbers of enrollment groups the refused-CONNECT
// benchmarks run with: one, the cloud's limit per type, and dpsd's default
// limit (DefaultMaxGroups, 1,000 in total).
func groupCounts() []int { return []int{1, 100, 1000} }

// putSymmetricGroups stores n symmetric-key groups, each with a primary and
// a secondary key, and returns the primary key of the last.
func (e *env) putSymmetricGroups(n int) []byte {
	e.t.Helper()
	var last []byte
	for i := range n {
		primary, secondary := symKey(byte(i)), symKey(byte(i>>8)|0x80)
		primary[1], secondary[1] = byte(i>>8), byte(i)
		e.putGroup(&store.Group{EnrollmentGroupID: fmt.Sprintf("sym-%04d", i), EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{
			Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: b64(primary), SecondaryKey: b64(secondary)}},
			ProvisioningStatus: store.StatusEnabled}})
		last = primary
	}
	return last
}

// putX509Groups stores n X.509 groups, each with a CA of its own, and
// returns the CA of the last.
func (e *env) putX509Groups(n int) *devca.CA {
	e.t.Helper()
	var last *devca.CA
	for i := range n {
		ca, err := devca.NewRootCA(fmt.Sprintf("group CA %04d", i), e.clock.Now(), 24*time.Hour, 1)
		if err != nil {
			e.t.Fatal(err)
		}
		e.putGroup(x509Group(fmt.Sprintf("x509-%04d", i), withCert(string(ca.CertPEM())), nil))
		last = ca
	}
	return last
}

// BenchmarkRefusedConnectSymmetric: a symmetric-key CONNECT for an id with
// no individual enrollment and a SAS no group key verifies, with n
// symmetric-key groups: the per-group work an attacker can cause.
func BenchmarkRefusedConnectSymmetric(b *testing.B) {
	for _, n := range groupCounts() {
		b.Run(fmt.Sprintf("groups=%d", n), func(b *testing.B) {
			e := newEnv(b)
			e.putSymmetricGroups(n)
			c := Connect{ClientID: "nobody", Username: username("nobody"), Password: e.sas("nobody", symKey(0xee), SymmetricKeyName)}
			_, _ = e.svc.Authenticate(e.ctx, c) // warm-up: code that keeps groups in memory loads them here
			b.ReportAllocs()
			cpu := processCPU(b)
			for b.Loop() {
				if _, err := e.svc.Authenticate(e.ctx, c); err == nil {
					b.Fatal("accepted")
				}
			}
			reportCPU(b, cpu)
		})
	}
}

// BenchmarkRefusedConnectX509: an X.509 CONNECT for an id with no
// individual enrollment whose chain comes from a CA no group names, with n
// X.509 groups.
func BenchmarkRefusedConnectX509(b *testing.B) {
	for _, n := range groupCounts() {
		b.Run(fmt.Sprintf("groups=%d", n), func(b *testing.B) {
			e := newEnv(b)
			e.putX509Groups(n)
			rogue, err := devca.NewRootCA("rogue CA", e.clock.Now(), 24*time.Hour, 1)
			if err != nil {
				b.Fatal(err)
			}
			leaf := e.issue(rogue, "nobody").cert
			c := Connect{ClientID: "nobody", Username: username("nobody"), PeerChain: []*x509.Certificate{leaf}}
			_, _ = e.svc.Authenticate(e.ctx, c) // warm-up: code that keeps groups in memory loads them here
			b.ReportAllocs()
			cpu := processCPU(b)
			for b.Loop() {
				if _, err := e.svc.Authenticate(e.ctx, c); err == nil {
					b.Fatal("accepted")
				}
			}
			reportCPU(b, cpu)
		})
	}
}

// BenchmarkAuthenticateSymmetricGroup: an accepted CONNECT of a device of
// the last of 10 symmetric-key groups (the device's own cost).
func BenchmarkAuthenticateSymmetricGroup(b *testing.B) {
	e := newEnv(b)
	groupKey := e.putSymmetricGroups(10)
	c := Connect{ClientID: "fleet-dev", Username: username("fleet-dev"), Password: e.sas("fleet-dev", deriveKey(groupKey, "fleet-dev"), SymmetricKeyName)}
	_, _ = e.svc.Authenticate(e.ctx, c) // warm-up, as above
	b.ReportAllocs()
	cpu := processCPU(b)
	for b.Loop() {
		if _, err := e.svc.Authenticate(e.ctx, c); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
}

// BenchmarkAuthenticateX509Group: an accepted CONNECT of a device whose
// chain verifies to the last of 10 X.509 groups.
func BenchmarkAuthenticateX509Group(b *testing.B) {
	e := newEnv(b)
	ca := e.putX509Groups(10)
	leaf := e.issue(ca, "fleet-dev").cert
	c := Connect{ClientID: "fleet-dev", Username: username("fleet-dev"), PeerChain: []*x509.Certificate{leaf}}
	_, _ = e.svc.Authenticate(e.ctx, c) // warm-up, as above
	b.ReportAllocs()
	cpu := processCPU(b)
	for b.Loop() {
		if _, err := e.svc.Authenticate(e.ctx, c); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
}

// BenchmarkRegisterSymmetricGroup: CONNECT, register and poll of a device
// of a symmetric-key group (one of 10): the server's work for one
// provisioning, store writes (fsync) included.
func BenchmarkRegisterSymmetricGroup(b *testing.B) {
	e := newEnv(b)
	groupKey := e.putSymmetricGroups(10)
	c := Connect{ClientID: "fleet-dev", Username: username("fleet-dev"), Password: e.sas("fleet-dev", deriveKey(groupKey, "fleet-dev"), SymmetricKeyName)}
	_, _ = e.svc.Authenticate(e.ctx, c) // warm-up, as above
	b.ReportAllocs()
	cpu := processCPU(b)
	for b.Loop() {
		id, err := e.svc.Authenticate(e.ctx, c)
		if err != nil {
			b.Fatal(err)
		}
		resp := e.svc.Register(e.ctx, id, RegisterRequest{}, "tr")
		if resp.Status != 202 {
			b.Fatalf("register %d", resp.Status)
		}
		if p := e.svc.Poll(e.ctx, id, resp.Body.(*OperationStatus).OperationID, "tr"); p.Status != 200 {
			b.Fatalf("poll %d", p.Status)
		}
	}
	reportCPU(b, cpu)
}

// BenchmarkGroupsReload: what the first CONNECT after a group write pays
// to reload the groups into memory, with 500 symmetric-key and 500 X.509
// groups (list, decrypt, decode, parse, index).
func BenchmarkGroupsReload(b *testing.B) {
	e := newEnv(b)
	e.putSymmetricGroups(500)
	e.putX509Groups(500)
	b.ReportAllocs()
	for b.Loop() {
		snap, err := e.svc.buildGroupSnapshot(e.ctx, 0)
		if err != nil || len(snap.symmetric) != 500 || countCAs(snap) != 500 {
			b.Fatalf("snapshot: %v", err)
		}
	}
}
