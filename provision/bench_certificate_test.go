package provision

import (
	"crypto/x509/pkix"
	"encoding/base64"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/issuer"
	"github.com/tpmdps/dpsd/store"
)

// BenchmarkRegisterCertificate is one symmetric-key registration with
// its poll, from the register body's bytes to the final answer's, without
// a CSR and with one (a P-256 device key) issued by a P-256 and by an
// RSA-2048 CA: what issuance adds to the service's CPU per provisioning
// (cpu-µs/op; the store's fsync is waiting, not CPU).
func BenchmarkRegisterCertificate(b *testing.B) {
	_, der := csrFor(b, "bench-dev")
	withCSR := []byte(`{"registrationId":"bench-dev","csr":"` + base64.StdEncoding.EncodeToString(der) + `"}`)
	for _, tc := range []struct {
		name string
		kt   issuer.KeyType
		body []byte
	}{
		{"none", "", []byte(`{"registrationId":"bench-dev"}`)},
		{"p256-ca", issuer.KeyECDSAP256, withCSR},
		{"rsa2048-ca", issuer.KeyRSA2048, withCSR},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b, func(c *Config) {
				if tc.kt != "" {
					ca, err := issuer.NewCA(tc.kt, pkix.Name{CommonName: "bench CA"}, time.Now(), 24*time.Hour*365)
					if err != nil {
						b.Fatal(err)
					}
					c.Issuer = ca
				}
			})
			en := symmetricEnrollment("bench-dev", symKey(1), symKey(2))
			en.CredentialPolicyName = "bench"
			e.putEnrollment(en)
			id := e.mustConnect("bench-dev", e.sas("bench-dev", symKey(1), ""))
			b.ReportAllocs()
			cpu := processCPU(b)
			for b.Loop() {
				req, err := ParseRegisterRequest(tc.body)
				if err != nil {
					b.Fatal(err)
				}
				resp := e.svc.Register(e.ctx, id, req, "tr")
				if resp.Status != 202 {
					b.Fatalf("register %d %s", resp.Status, encode(b, resp.Body))
				}
				p := e.svc.Poll(e.ctx, id, resp.Body.(*OperationStatus).OperationID, "tr")
				if p.Status != 200 || p.Body.(*OperationStatus).Status != store.RegistrationAssigned {
					b.Fatalf("poll %d", p.Status)
				}
				if _, err := EncodeBody(p.Body); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu)
		})
	}
}
