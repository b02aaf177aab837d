package provision

import (
	"testing"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/internal/testkit/ekca"
)

// BenchmarkEKCertificatePerProvisioning: the EK certificate work of one TPM
// provisioning through a TPM group: two checks of the same certificate
// (the challenge and the register), base64 decoding, key match and, the
// first time, parsing and chain verification. "cached": the verdict is
// already known (every provisioning after a fleet's first, and the
// register after its challenge); "uncached": a fresh groups snapshot each
// time (the first certificate after a group write), so one parse and one
// chain verification per provisioning.
func BenchmarkEKCertificatePerProvisioning(b *testing.B) {
	e := newEnv(b)
	ca := ekca.New(b, "vendor A")
	e.putGroup(tpmGroupRecord("factory-a", ca))
	d := newTPMDevice(b, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	ek, err := attest.ParsePublic(d.ekPublic())
	if err != nil {
		b.Fatal(err)
	}
	cert := b64(ca.Issue(b, ek.PublicKey(), ekca.EK{}))
	snap, err := e.svc.groups(e.ctx)
	if err != nil {
		b.Fatal(err)
	}
	now := e.clock.Now()
	twice := func(snap *groupSnapshot) {
		for range 2 {
			if c := e.svc.checkEKCertificate(snap, ek, cert, now); c.err != nil || len(c.roots) != 1 {
				b.Fatalf("check: %v", c.err)
			}
		}
	}
	b.Run("cached", func(b *testing.B) {
		twice(snap)
		b.ReportAllocs()
		for b.Loop() {
			twice(snap)
		}
	})
	b.Run("uncached", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			fresh := *snap
			fresh.ek = &ekTrustIndex{trust: snap.ek.trust, service: snap.ek.service, cache: newEKCertCache()}
			twice(&fresh)
		}
	})
}

// BenchmarkTPMGroupChallenge is BenchmarkTPMChallenge's RSA case through a
// TPM group: the certificate check (cached), the group match and a group
// challenge reference.
func BenchmarkTPMGroupChallenge(b *testing.B) {
	e := newEnv(b)
	ca := ekca.New(b, "vendor A")
	e.putGroup(tpmGroupRecord("factory-a", ca))
	d := newTPMDevice(b, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	id := Identity{RegistrationID: d.registrationID(), Method: AuthRestricted}
	req := RegisterRequest{TPM: d.keysWith(ca.Issue(b, d.ekKey(), ekca.EK{}))}
	b.ReportAllocs()
	for b.Loop() {
		if resp := e.svc.Register(e.ctx, id, req, "tr"); resp.Status != 401 || resp.Body.(*TPMChallenge) == nil {
			b.Fatalf("status %d", resp.Status)
		}
	}
}

// BenchmarkRegisterTPMGroup is BenchmarkRegisterTPM through a TPM group.
func BenchmarkRegisterTPMGroup(b *testing.B) {
	e := newEnv(b)
	ca := ekca.New(b, "vendor A")
	e.putGroup(tpmGroupRecord("factory-a", ca))
	d := newTPMDevice(b, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	id := Identity{RegistrationID: d.registrationID(), Method: AuthTPM, GroupID: "factory-a", ChallengeRef: "bench"}
	req := RegisterRequest{TPM: d.keysWith(ca.Issue(b, d.ekKey(), ekca.EK{}))}
	b.ReportAllocs()
	cpu := processCPU(b)
	for b.Loop() {
		resp := e.svc.Register(e.ctx, id, req, "tr")
		if resp.Status != 202 {
			b.Fatalf("register %d", resp.Status)
		}
		if p := e.svc.Poll(e.ctx, id, resp.Body.(*OperationStatus).OperationID, "tr"); p.Status != 200 {
			b.Fatalf("poll %d", p.Status)
		}
	}
	reportCPU(b, cpu)
}
