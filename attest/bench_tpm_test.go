package attest_test

import (
	"crypto/rand"
	"testing"

	"github.com/tpmdps/dpsd/attest"
)

// tpmBenchBlob measures NewActivationBlob for keys already parsed (the
// server parses the EK and SRK once per request).
func tpmBenchBlob(b *testing.B, ekName, srkName string) {
	ek := tpmParse(b, tpmFixture(b, ekName))
	srk := tpmParse(b, tpmFixture(b, srkName))
	key := make([]byte, 32)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := attest.NewActivationBlob(rand.Reader, ek, srk, key); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewActivationBlobRSA builds blobs for an RSA-2048 EK and SRK.
func BenchmarkNewActivationBlobRSA(b *testing.B) {
	tpmBenchBlob(b, "ek-rsa2048.sim.tpm2b", "srk-rsa2048-empty-unique.sim.tpm2b")
}

// BenchmarkNewActivationBlobECC builds blobs for an ECC P-256 EK and SRK.
func BenchmarkNewActivationBlobECC(b *testing.B) {
	tpmBenchBlob(b, "ek-eccp256.sim.tpm2b", "srk-eccp256.sim.tpm2b")
}

// tpmBenchParse measures ParsePublic.
func tpmBenchParse(b *testing.B, name string) {
	raw := tpmFixture(b, name)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := attest.ParsePublic(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParsePublicRSA parses an RSA-2048 EK.
func BenchmarkParsePublicRSA(b *testing.B) { tpmBenchParse(b, "ek-rsa2048.sim.tpm2b") }

// BenchmarkParsePublicECC parses an ECC P-256 EK.
func BenchmarkParsePublicECC(b *testing.B) { tpmBenchParse(b, "ek-eccp256.sim.tpm2b") }
