package attest_test

import (
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
)

// BenchmarkParseEKCertificate parses swtpm's RSA EK certificate (critical
// TPM SAN, EKU, subject directory attributes).
func BenchmarkParseEKCertificate(b *testing.B) {
	der := fixture(b, "swtpm-ek-rsa2048.der")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := attest.ParseEKCertificate(der); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEKTrustVerify verifies that certificate's chain: ECDSA P-256
// signature by the intermediate, RSA-2048 signature of the intermediate
// by the root, as vendor chains are.
func BenchmarkEKTrustVerify(b *testing.B) {
	c, err := attest.ParseEKCertificate(fixture(b, "swtpm-ek-rsa2048.der"))
	if err != nil {
		b.Fatal(err)
	}
	trust := fixtureTrust(b)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := trust.Verify(c, now); err != nil {
			b.Fatal(err)
		}
	}
}
