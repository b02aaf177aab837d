package device

import (
	"context"
	"testing"

	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
)

// BenchmarkProvisionSymmetricKey measures one whole provisioning (connect,
// register, poll, disconnect) against the in-process service over TCP.
func BenchmarkProvisionSymmetricKey(b *testing.B) {
	srv := startServerTB(b)
	key := []byte("0123456789abcdef0123456789abcdef")
	if _, err := srv.Store.PutEnrollment(context.Background(), storeSymEnrollment("bench-sym", key), ""); err != nil {
		b.Fatal(err)
	}
	cfg := serverConfigTB(b, srv, TransportTCP, &SymmetricKey{Key: key})
	cfg.RegistrationID = "bench-sym"
	for b.Loop() {
		if _, err := Provision(context.Background(), cfg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProvisionTPMSimulator measures a whole TPM provisioning (two
// connections, two blob activations, TPM2_HMAC, persisting the hub key) on
// the reference simulator over TCP.
func BenchmarkProvisionTPMSimulator(b *testing.B) {
	srv := startServerTB(b)
	att := &TPM{Device: tpmsim.Open(b)}
	ek, err := att.EndorsementKey(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	regID := enrollTPMTB(b, srv, "", ek)
	cfg := serverConfigTB(b, srv, TransportTCP, att)
	cfg.RegistrationID = regID
	for b.Loop() {
		if _, err := Provision(context.Background(), cfg); err != nil {
			b.Fatal(err)
		}
	}
}
