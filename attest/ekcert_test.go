package attest_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/internal/testkit/ekca"
)

// fixture reads attest/testdata/ekcert/name (see its README).
func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "ekcert", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fixtureTrust is the trust of the CA that signed the swtpm fixtures.
func fixtureTrust(t testing.TB) *attest.EKTrust {
	t.Helper()
	var b attest.CertBundle
	for _, f := range []string{"root.pem", "intermediate.pem"} {
		if err := b.Add(fixture(t, f)); err != nil {
			t.Fatal(err)
		}
	}
	if len(b.Roots) != 1 || len(b.Intermediates) != 1 {
		t.Fatalf("bundle: %d roots, %d intermediates", len(b.Roots), len(b.Intermediates))
	}
	return attest.NewEKTrust(&b)
}

func mustParsePublic(t testing.TB, raw []byte) *attest.Public {
	t.Helper()
	p, err := attest.ParsePublic(raw)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestParseSwtpmEKCertificates reads the certificates swtpm_setup and
// swtpm_cert wrote (critical SAN with the TPM's names, EKU 2.23.133.8.1),
// matches them to the EKs tpm2-tools read from the same TPM, and verifies
// their chains; Go alone refuses them for the SAN.
func TestParseSwtpmEKCertificates(t *testing.T) {
	trust := fixtureTrust(t)
	now := time.Now()
	for _, tc := range []struct{ cert, ek string }{
		{"swtpm-ek-rsa2048.der", "swtpm-ek-rsa2048.tpm2b"},
		{"swtpm-cert-ek-p256.der", "swtpm-ek-eccp256.tpm2b"},
	} {
		t.Run(tc.cert, func(t *testing.T) {
			der := fixture(t, tc.cert)
			c, err := attest.ParseEKCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if c.Manufacturer != "id:00001014" || c.Model != "swtpm" || c.Version != "id:20191023" || !c.EKUsage {
				t.Fatalf("names %q %q %q, EK usage %v", c.Manufacturer, c.Model, c.Version, c.EKUsage)
			}
			if len(c.Certificate.UnhandledCriticalExtensions) != 0 {
				t.Fatalf("unhandled critical extensions left: %v", c.Certificate.UnhandledCriticalExtensions)
			}
			if err := c.MatchesEK(mustParsePublic(t, fixture(t, tc.ek))); err != nil {
				t.Fatal(err)
			}
			chains, err := trust.Verify(c, now)
			if err != nil || len(chains) != 1 || len(chains[0]) != 3 {
				t.Fatalf("verify: %d chains, %v", len(chains), err)
			}
			// Without the SAN handling, Go refuses the certificate.
			plain, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			var b attest.CertBundle
			_ = b.Add(fixture(t, "root.pem"))
			_ = b.Add(fixture(t, "intermediate.pem"))
			roots, inter := x509.NewCertPool(), x509.NewCertPool()
			roots.AddCert(b.Roots[0])
			inter.AddCert(b.Intermediates[0])
			_, err = plain.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			var unhandled x509.UnhandledCriticalExtension
			if !errors.As(err, &unhandled) {
				t.Fatalf("Go's own parse: %v, want an unhandled critical extension", err)
			}
		})
	}
	// The P-384 EK of swtpm_setup parses (an EK the service refuses as a
	// key, but its certificate is well formed).
	if _, err := attest.ParseEKCertificate(fixture(t, "swtpm-ek-p384.der")); err != nil {
		t.Fatal(err)
	}
}

// TestEKCertificateMismatch: the RSA certificate is not the ECC EK's, nor
// another RSA key's.
func TestEKCertificateMismatch(t *testing.T) {
	c, err := attest.ParseEKCertificate(fixture(t, "swtpm-ek-rsa2048.der"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"swtpm-ek-eccp256.tpm2b", "../../../testdata/tpm/ek-rsa2048.sim.tpm2b"} {
		if err := c.MatchesEK(mustParsePublic(t, fixture(t, f))); !errors.Is(err, attest.ErrEKCertificateKeyMismatch) {
			t.Errorf("%s: %v", f, err)
		}
	}
	if err := c.MatchesEK(nil); !errors.Is(err, attest.ErrEKCertificateKeyMismatch) {
		t.Errorf("nil EK: %v", err)
	}
}

// TestTrimEKCertificate: the TCG NV header and trailing padding are removed.
func TestTrimEKCertificate(t *testing.T) {
	der := fixture(t, "swtpm-ek-rsa2048.der")
	header := append([]byte{0x10, 0x01, 0x00, byte(len(der) >> 8), byte(len(der))}, der...)
	for name, in := range map[string][]byte{
		"plain":           der,
		"padded 0xff":     append(append([]byte(nil), der...), bytes.Repeat([]byte{0xff}, 300)...),
		"padded zeros":    append(append([]byte(nil), der...), make([]byte, 17)...),
		"header":          header,
		"header and pads": append(append([]byte(nil), header...), bytes.Repeat([]byte{0xff}, 40)...),
	} {
		got, err := attest.TrimEKCertificate(in)
		if err != nil || !bytes.Equal(got, der) {
			t.Errorf("%s: %v", name, err)
		}
		if c, err := attest.ParseEKCertificate(in); err != nil || !bytes.Equal(c.Certificate.Raw, der) {
			t.Errorf("%s: parse: %v", name, err)
		}
	}
	for name, in := range map[string][]byte{
		"empty":          nil,
		"short header":   header[:100],
		"truncated":      der[:len(der)-1],
		"not a sequence": append([]byte{0x31}, der[1:]...),
		"too large":      append(append([]byte(nil), der...), make([]byte, attest.MaxEKCertificateSize)...),
		"garbage":        []byte("-----BEGIN CERTIFICATE-----"),
	} {
		if _, err := attest.ParseEKCertificate(in); !errors.Is(err, attest.ErrBadEKCertificate) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// rsaKey and eccKey make EK stand-ins (the certificate rules do not need a TPM).
func rsaKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func eccKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// caTrust is the trust of a test CA, with optional CRLs.
func caTrust(ca *ekca.CA, crls ...[]byte) *attest.EKTrust {
	b := &attest.CertBundle{Roots: []*x509.Certificate{ca.Root}, Intermediates: []*x509.Certificate{ca.Intermediate}}
	for _, d := range crls {
		l, err := x509.ParseRevocationList(d)
		if err != nil {
			panic(err)
		}
		b.CRLs = append(b.CRLs, l)
	}
	return attest.NewEKTrust(b)
}

func TestEKTrustVerify(t *testing.T) {
	ca := ekca.New(t, "vendor A")
	other := ekca.New(t, "vendor B")
	key := eccKey(t)
	now := time.Now()
	parse := func(der []byte) *attest.EKCertificate {
		t.Helper()
		c, err := attest.ParseEKCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	good := parse(ca.Issue(t, &key.PublicKey, ekca.EK{}))
	if _, err := caTrust(ca).Verify(good, now); err != nil {
		t.Fatalf("good: %v", err)
	}
	if _, err := caTrust(other).Verify(good, now); !errors.Is(err, attest.ErrEKCertificateUntrusted) {
		t.Fatalf("other vendor's roots: %v", err)
	}
	if _, err := attest.NewEKTrust(nil).Verify(good, now); !errors.Is(err, attest.ErrEKCertificateUntrusted) {
		t.Fatalf("no roots: %v", err)
	}
	// Only the intermediate, not the root: no path to a root.
	if _, err := attest.NewEKTrust(&attest.CertBundle{Intermediates: []*x509.Certificate{ca.Intermediate}}).Verify(good, now); !errors.Is(err, attest.ErrEKCertificateUntrusted) {
		t.Fatalf("intermediate only: %v", err)
	}
	expired := parse(ca.Issue(t, &key.PublicKey, ekca.EK{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}))
	if _, err := caTrust(ca).Verify(expired, now); !errors.Is(err, attest.ErrEKCertificateExpired) {
		t.Fatalf("expired: %v", err)
	}
	future := parse(ca.Issue(t, &key.PublicKey, ekca.EK{NotBefore: now.Add(time.Hour)}))
	if _, err := caTrust(ca).Verify(future, now); !errors.Is(err, attest.ErrEKCertificateExpired) {
		t.Fatalf("not yet valid: %v", err)
	}
	// An unknown critical extension still fails: only the SAN is cleared.
	odd := parse(ca.Issue(t, &key.PublicKey, ekca.EK{ExtraExtensions: []pkix.Extension{
		{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Critical: true, Value: []byte{5, 0}}}}))
	if _, err := caTrust(ca).Verify(odd, now); !errors.Is(err, attest.ErrEKCertificateUntrusted) {
		t.Fatalf("unknown critical extension: %v", err)
	}
	// RSA-PSS (standard parameters) signed by the RSA root.
	pss := parse(ca.Issue(t, &key.PublicKey, ekca.EK{ByRoot: true, SignatureAlgorithm: x509.SHA256WithRSAPSS}))
	if pss.Certificate.SignatureAlgorithm != x509.SHA256WithRSAPSS {
		t.Fatalf("signature algorithm %v", pss.Certificate.SignatureAlgorithm)
	}
	if _, err := caTrust(ca).Verify(pss, now); err != nil {
		t.Fatalf("RSA-PSS: %v", err)
	}
}

func TestEKTrustRevocation(t *testing.T) {
	ca := ekca.New(t, "vendor A")
	key := eccKey(t)
	now := time.Now()
	c, err := attest.ParseEKCertificate(ca.Issue(t, &key.PublicKey, ekca.EK{Serial: big.NewInt(4242)}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := caTrust(ca, ca.CRL(t, big.NewInt(1), big.NewInt(4242))).Verify(c, now); !errors.Is(err, attest.ErrEKCertificateRevoked) {
		t.Fatalf("revoked: %v", err)
	}
	if _, err := caTrust(ca, ca.CRL(t, big.NewInt(4243))).Verify(c, now); err != nil {
		t.Fatalf("another serial revoked: %v", err)
	}
	// A list with the right issuer name but signed by another key does not count.
	forger := ekca.New(t, "vendor A")
	forger.Intermediate = ca.Intermediate // same name, other key
	if _, err := caTrust(ca, forger.CRL(t, big.NewInt(4242))).Verify(c, now); err != nil {
		t.Fatalf("CRL not signed by the issuer counted: %v", err)
	}
}

// TestEKCertificateQuirks: the forms of real EK certificates accepted, and
// those refused, as the comment of attest/ekcert.go decides.
func TestEKCertificateQuirks(t *testing.T) {
	ca := ekca.New(t, "vendor A")
	rk := rsaKey(t)
	ek := ekPublicOf(t, &rk.PublicKey)
	now := time.Now()

	// RSAES-OAEP subject public key: Go leaves the key nil; we read it.
	good := ca.Issue(t, &rk.PublicKey, ekca.EK{})
	rsaEncryption := []byte{0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01}
	oaep := ca.Resign(t, good, func(tbs []byte) []byte {
		i := bytes.Index(tbs, rsaEncryption)
		if i < 0 {
			t.Fatal("no rsaEncryption OID in the TBS")
		}
		tbs[i+len(rsaEncryption)-1] = 0x07
		return tbs
	})
	if plain, err := x509.ParseCertificate(oaep); err != nil || plain.PublicKey != nil {
		t.Fatalf("Go's parse of the OAEP certificate: key %T, %v", plain.PublicKey, err)
	}
	c, err := attest.ParseEKCertificate(oaep)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.MatchesEK(ek); err != nil {
		t.Fatal(err)
	}
	if _, err := caTrust(ca).Verify(c, now); err != nil {
		t.Fatalf("OAEP certificate chain: %v", err)
	}

	// A negative serial number: refused, as Go refuses it.
	negative := ca.Resign(t, ca.Issue(t, &rk.PublicKey, ekca.EK{Serial: big.NewInt(0x55)}), func(tbs []byte) []byte {
		// TBSCertificate: SEQUENCE, [0] version, then the serial INTEGER 02 01 55.
		i := bytes.Index(tbs, []byte{0x02, 0x01, 0x55})
		if i < 0 {
			t.Fatal("serial not found")
		}
		tbs[i+2] = 0xd5 // -43
		return tbs
	})
	if _, err := attest.ParseEKCertificate(negative); !errors.Is(err, attest.ErrBadEKCertificate) || !strings.Contains(err.Error(), "negative serial") {
		t.Fatalf("negative serial: %v", err)
	}

	// A CA certificate is no EK certificate.
	if _, err := attest.ParseEKCertificate(ca.Intermediate.Raw); !errors.Is(err, attest.ErrBadEKCertificate) {
		t.Fatalf("CA certificate: %v", err)
	}
	// An EKU for other uses only.
	tls := ca.Issue(t, &rk.PublicKey, ekca.EK{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if _, err := attest.ParseEKCertificate(tls); !errors.Is(err, attest.ErrBadEKCertificate) {
		t.Fatalf("serverAuth only: %v", err)
	}
	// An EKU of "any" is fine.
	anyEKU, err := attest.ParseEKCertificate(ca.Issue(t, &rk.PublicKey, ekca.EK{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}))
	if err != nil || anyEKU.EKUsage {
		t.Fatalf("any EKU: %v", err)
	}
	// Without a SAN the certificate parses, names nothing, and verifies.
	noSAN, err := attest.ParseEKCertificate(ca.Issue(t, &rk.PublicKey, ekca.EK{NoSAN: true}))
	if err != nil || noSAN.Manufacturer != "" {
		t.Fatalf("no SAN: %+v %v", noSAN, err)
	}
	if _, err := caTrust(ca).Verify(noSAN, now); err != nil {
		t.Fatalf("no SAN: %v", err)
	}
	// A manufacturer given twice is ambiguous.
	twice := ekca.SubjectAltName(t, "id:1", "m", "v")
	var gns []asn1.RawValue
	if _, err := asn1.Unmarshal(twice.Value, &gns); err != nil {
		t.Fatal(err)
	}
	twice.Value, _ = asn1.Marshal(append(gns, gns[0]))
	if _, err := attest.ParseEKCertificate(ca.Issue(t, &rk.PublicKey, ekca.EK{NoSAN: true, ExtraExtensions: []pkix.Extension{twice}})); !errors.Is(err, attest.ErrBadEKCertificate) {
		t.Fatalf("manufacturer twice: %v", err)
	}
}

// ekPublicOf wraps an RSA key in a TPM2B_PUBLIC of the TCG RSA EK shape, by
// replacing the modulus of a fixture EK.
func ekPublicOf(t testing.TB, k *rsa.PublicKey) *attest.Public {
	t.Helper()
	raw := append([]byte(nil), fixture(t, "swtpm-ek-rsa2048.tpm2b")...)
	orig := mustParsePublic(t, raw).PublicKey().(*rsa.PublicKey)
	i := bytes.Index(raw, orig.N.Bytes())
	if i < 0 {
		t.Fatal("modulus not found")
	}
	copy(raw[i:], k.N.FillBytes(make([]byte, 256)))
	return mustParsePublic(t, raw)
}

// TestEKHash: the hash of the EK is the SHA-256 of the certificate's
// subject public key info (the openssl recipe in EKHash's comment), and
// ParseEKHash reads it back.
func TestEKHash(t *testing.T) {
	for _, tc := range []struct{ cert, ek string }{
		{"swtpm-ek-rsa2048.der", "swtpm-ek-rsa2048.tpm2b"},
		{"swtpm-cert-ek-p256.der", "swtpm-ek-eccp256.tpm2b"},
	} {
		c, err := x509.ParseCertificate(fixture(t, tc.cert))
		if err != nil {
			t.Fatal(err)
		}
		want := sha256.Sum256(c.RawSubjectPublicKeyInfo)
		got, err := attest.EKHash(mustParsePublic(t, fixture(t, tc.ek)))
		if err != nil || got != want {
			t.Fatalf("%s: %x, want %x (%v)", tc.ek, got, want, err)
		}
		for _, s := range []string{hex.EncodeToString(want[:]), strings.ToUpper(hex.EncodeToString(want[:])), " sha256:" + hex.EncodeToString(want[:]) + "\n"} {
			if h, err := attest.ParseEKHash(s); err != nil || h != want {
				t.Fatalf("ParseEKHash(%q): %v", s, err)
			}
		}
	}
	for _, s := range []string{"", "abc", strings.Repeat("g", 64), strings.Repeat("0", 63), strings.Repeat("0", 65)} {
		if _, err := attest.ParseEKHash(s); err == nil {
			t.Errorf("ParseEKHash(%q) accepted", s)
		}
	}
}

func TestParseTrustFile(t *testing.T) {
	ca := ekca.New(t, "vendor A")
	crl := ca.CRL(t, big.NewInt(7))
	bundle := "# Vendor A\n# owner: test\n" + string(ekca.PEM(ca.Root)) + "comment between blocks\n" +
		string(ekca.PEM(ca.Intermediate)) + string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl}))
	var b attest.CertBundle
	if err := b.Add([]byte(bundle)); err != nil {
		t.Fatal(err)
	}
	if len(b.Roots) != 1 || !b.Roots[0].Equal(ca.Root) || len(b.Intermediates) != 1 || len(b.CRLs) != 1 {
		t.Fatalf("bundle: %d roots, %d intermediates, %d CRLs", len(b.Roots), len(b.Intermediates), len(b.CRLs))
	}
	for name, data := range map[string][]byte{"DER root": ca.Root.Raw, "DER intermediate": ca.Intermediate.Raw} {
		certs, crls, err := attest.ParseTrustFile(data)
		if err != nil || len(certs) != 1 || len(crls) != 0 {
			t.Fatalf("%s: %d %d %v", name, len(certs), len(crls), err)
		}
	}
	if certs, crls, err := attest.ParseTrustFile(crl); err != nil || len(certs) != 0 || len(crls) != 1 {
		t.Fatalf("DER CRL: %v", err)
	}
	if !attest.IsSelfSigned(ca.Root) || attest.IsSelfSigned(ca.Intermediate) {
		t.Fatal("IsSelfSigned")
	}
	for name, data := range map[string]string{
		"empty":      "",
		"no blocks":  "just text",
		"key block":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})),
		"bad cert":   string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0}})),
		"bad crl":    string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte{0x30, 0}})),
		"random DER": "\x30\x03\x02\x01\x01",
	} {
		if _, _, err := attest.ParseTrustFile([]byte(data)); !errors.Is(err, attest.ErrBadTrustFile) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
