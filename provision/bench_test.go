package provision

import (
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/device/devtpm"
)

func BenchmarkAuthenticateSymmetric(b *testing.B) {
	e := newEnv(b)
	e.putEnrollment(symmetricEnrollment("dev-1", symKey(1), symKey(2)))
	c := Connect{ClientID: "dev-1", Username: username("dev-1"), Password: e.sas("dev-1", symKey(1), "registration")}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.svc.Authenticate(e.ctx, c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTPMChallenge(b *testing.B) {
	for _, tc := range []struct {
		name string
		ek   devtpm.Alg
		srk  devtpm.SRKTemplate
	}{
		{"RSA", devtpm.RSA2048, devtpm.SRKRSAEmptyUnique},
		{"ECC", devtpm.ECCP256, devtpm.SRKECCP256},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b)
			d := newTPMDevice(b, tc.ek, tc.srk)
			regID := d.registrationID()
			e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
			id := Identity{RegistrationID: regID, Method: AuthRestricted}
			req := RegisterRequest{TPM: d.keys()}
			b.ReportAllocs()
			for b.Loop() {
				if resp := e.svc.Register(e.ctx, id, req, "tr"); resp.Status != 401 {
					b.Fatalf("status %d", resp.Status)
				}
			}
		})
	}
}

func BenchmarkAuthenticateTPM(b *testing.B) {
	e := newEnv(b)
	d := newTPMDevice(b, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
	// Tokens are signed in software with the derived key (the TPM is not
	// what is measured); each challenge authenticates once, so each
	// iteration uses a fresh reference.
	tokens := make([][]byte, 0, 1024)
	for b.Loop() {
		if len(tokens) == 0 {
			b.StopTimer()
			for range cap(tokens) {
				ref, err := newChallengeRef(e.svc.cfg.Rand, e.svc.run, e.clock.Now().Add(time.Minute))
				if err != nil {
					b.Fatal(err)
				}
				tokens = append(tokens, e.sas(regID, challengeKey(e.svc.cfg.ChallengeSecret, regID, ref), ref))
			}
			b.StartTimer()
		}
		tok := tokens[len(tokens)-1]
		tokens = tokens[:len(tokens)-1]
		if _, err := e.connect(regID, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRegisterTPM: the register and poll of an authenticated RSA TPM
// device (enrollment check, hub key blob for its SRK, durable record),
// with the process CPU per provisioning.
func BenchmarkRegisterTPM(b *testing.B) {
	e := newEnv(b)
	d := newTPMDevice(b, devtpm.RSA2048, devtpm.SRKRSAEmptyUnique)
	regID := d.registrationID()
	e.putEnrollment(tpmEnrollment(regID, d.ekPublic()))
	id := Identity{RegistrationID: strings.ToLower(regID), Method: AuthTPM, ChallengeRef: "bench"}
	req := RegisterRequest{TPM: d.keys()}
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
