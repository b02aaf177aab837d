package attest_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
)

// FuzzParseEKCertificate checks that ParseEKCertificate never panics on
// device input, that its errors wrap ErrBadEKCertificate, and that what it
// accepts is consistent: the certificate is exactly the trimmed input, a
// second parse of it gives the same names and key, no SAN is left unhandled
// once the TPM names were read, and matching and verification (against the
// swtpm fixtures' CA) run without panicking and with their own errors. The
// seeds are the swtpm certificates (RSA, P-256, P-384), one with the TCG NV
// header and one padded as an NV index is.
func FuzzParseEKCertificate(f *testing.F) {
	for _, name := range []string{"swtpm-ek-rsa2048.der", "swtpm-cert-ek-p256.der", "swtpm-ek-p384.der"} {
		f.Add(fixture(f, name))
	}
	der := fixture(f, "swtpm-ek-rsa2048.der")
	f.Add(append([]byte{0x10, 0x01, 0x00, byte(len(der) >> 8), byte(len(der))}, der...))
	f.Add(append(append([]byte(nil), der...), bytes.Repeat([]byte{0xff}, 64)...))
	f.Add([]byte{})
	trust := fixtureTrust(f)
	ek := mustParsePublic(f, fixture(f, "swtpm-ek-rsa2048.tpm2b"))
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := attest.ParseEKCertificate(b)
		if err != nil {
			if !errors.Is(err, attest.ErrBadEKCertificate) {
				t.Fatalf("error %v does not wrap ErrBadEKCertificate", err)
			}
			return
		}
		trimmed, err := attest.TrimEKCertificate(b)
		if err != nil || !bytes.Equal(trimmed, c.Certificate.Raw) {
			t.Fatalf("certificate is not the trimmed input: %v", err)
		}
		again, err := attest.ParseEKCertificate(c.Certificate.Raw)
		if err != nil || again.Manufacturer != c.Manufacturer || again.Model != c.Model || again.Version != c.Version ||
			again.EKUsage != c.EKUsage {
			t.Fatalf("re-parse differs: %v", err)
		}
		if c.PublicKey == nil {
			t.Fatal("accepted without a public key")
		}
		if c.Manufacturer+c.Model+c.Version != "" {
			for _, id := range c.Certificate.UnhandledCriticalExtensions {
				if id.String() == "2.5.29.17" {
					t.Fatal("TPM SAN read but left unhandled")
				}
			}
		}
		if err := c.MatchesEK(ek); err != nil && !errors.Is(err, attest.ErrEKCertificateKeyMismatch) {
			t.Fatalf("MatchesEK: %v", err)
		}
		if _, err := trust.Verify(c, now); err != nil && !errors.Is(err, attest.ErrEKCertificateUntrusted) &&
			!errors.Is(err, attest.ErrEKCertificateExpired) && !errors.Is(err, attest.ErrEKCertificateRevoked) {
			t.Fatalf("Verify: %v", err)
		}
	})
}
