package issuer_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // a SHA-1 signature the parser must refuse
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/issuer"
)

// edgeCSR is the register body's clientCertificateCsr as IoT Edge's
// identity service builds it (feature/dps_certs: P-256 key, subject
// CN=<registration id> only, SHA-256, DER, standard base64 with no line
// breaks), generated with OpenSSL the same way for registration id
// my-edge-device.
const edgeCSR = "MIHTMHsCAQAwGTEXMBUGA1UEAwwObXktZWRnZS1kZXZpY2UwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATs6ckj27wDQlc/9LfkCV8F3m7E6mjMq5igusbTV29+tiUf0tyl2zY6WpU1Pv0V1K3vPVEo1qARYQULS9Zitf7moAAwCgYIKoZIzj0EAwIDSAAwRQIgfGdKc/kQfUIqUhVkT2HKQevaynC8/HDQ1KdVKs4telkCIQDxZpMhfpYs4faoLkH7LfWaV91AvXhzBg4EpDhXFdoPvA=="

// newCSR returns the DER of a CSR for cn signed by key.
func newCSR(t testing.TB, key crypto.Signer, cn string) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func ecKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sha1CSR re-signs a CSR's content with SHA-1 (which Go no longer writes).
func sha1CSR(t *testing.T, key *rsa.PrivateKey) []byte {
	t.Helper()
	csr, err := x509.ParseCertificateRequest(newCSR(t, key, "dev"))
	if err != nil {
		t.Fatal(err)
	}
	h := sha1.Sum(csr.RawTBSCertificateRequest) //nolint:gosec // see import
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA1, h[:])
	if err != nil {
		t.Fatal(err)
	}
	der, err := asn1.Marshal(struct {
		TBS asn1.RawValue
		Alg pkix.AlgorithmIdentifier
		Sig asn1.BitString
	}{
		TBS: asn1.RawValue{FullBytes: csr.RawTBSCertificateRequest},
		Alg: pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 5}, Parameters: asn1.NullRawValue},
		Sig: asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestParseCSRAccepts(t *testing.T) {
	p256 := newCSR(t, ecKey(t, elliptic.P256()), "dev-1")
	b64 := base64.StdEncoding.EncodeToString(p256)
	pemText := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: p256}))
	var wrapped strings.Builder
	for i := 0; i < len(b64); i += 64 {
		wrapped.WriteString(b64[i:min(i+64, len(b64))] + "\r\n")
	}
	for name, tc := range map[string]struct {
		text string
		cn   string
	}{
		"edge recorded (P-256, base64)": {edgeCSR, "my-edge-device"},
		"P-256 base64":                  {b64, "dev-1"},
		"P-256 PEM (2021 samples)":      {pemText, "dev-1"},
		"PEM with JSON newline at end":  {pemText + "\n", "dev-1"},
		"NEW CERTIFICATE REQUEST":       {strings.ReplaceAll(pemText, "CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"), "dev-1"},
		"base64 wrapped at 64 columns":  {wrapped.String(), "dev-1"},
		"P-384":                         {base64.StdEncoding.EncodeToString(newCSR(t, ecKey(t, elliptic.P384()), "dev-384")), "dev-384"},
		"RSA-2048":                      {base64.StdEncoding.EncodeToString(newCSR(t, rsaKey(t, 2048), "dev-rsa")), "dev-rsa"},
		"RSA-3072":                      {base64.StdEncoding.EncodeToString(newCSR(t, rsaKey(t, 3072), "dev-rsa3")), "dev-rsa3"},
	} {
		csr, err := issuer.ParseCSR(tc.text)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if csr.Subject.CommonName != tc.cn {
			t.Errorf("%s: CN %q, want %q", name, csr.Subject.CommonName, tc.cn)
		}
	}
}

func TestParseCSRRefuses(t *testing.T) {
	// An ECDSA signature's length varies; take a request whose base64 needs
	// padding, so that its unpadded form differs from the padded one.
	good := newCSR(t, ecKey(t, elliptic.P256()), "dev-1")
	for len(good)%3 == 0 {
		good = newCSR(t, ecKey(t, elliptic.P256()), "dev-1")
	}
	b64 := base64.StdEncoding.EncodeToString(good)
	tampered := append([]byte(nil), good...)
	// Change one byte of the subject (inside the signed content).
	if i := strings.Index(string(tampered), "dev-1"); i >= 0 {
		tampered[i] = 'x'
	} else {
		t.Fatal("CN not found in the DER")
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pemText := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: good}))
	for name, tc := range map[string]struct {
		text string
		want error
	}{
		"empty":                   {"", issuer.ErrMalformedCSR},
		"spaces":                  {"  \n", issuer.ErrMalformedCSR},
		"URL-safe base64":         {base64.URLEncoding.EncodeToString(good), issuer.ErrMalformedCSR},
		"unpadded base64":         {base64.RawStdEncoding.EncodeToString(good), issuer.ErrMalformedCSR},
		"trailing DER":            {base64.StdEncoding.EncodeToString(append(append([]byte(nil), good...), 0)), issuer.ErrMalformedCSR},
		"truncated DER":           {base64.StdEncoding.EncodeToString(good[:len(good)-4]), issuer.ErrMalformedCSR},
		"a certificate, not CSR":  {strings.ReplaceAll(pemText, "CERTIFICATE REQUEST", "CERTIFICATE"), issuer.ErrMalformedCSR},
		"text after the PEM":      {pemText + "junk", issuer.ErrMalformedCSR},
		"two PEM blocks":          {pemText + pemText, issuer.ErrMalformedCSR},
		"PEM headers":             {strings.Replace(pemText, "-----\n", "-----\nProc-Type: 4,ENCRYPTED\n\n", 1), issuer.ErrMalformedCSR},
		"JSON-ish":                {`{"csr":"` + b64 + `"}`, issuer.ErrMalformedCSR},
		"too long":                {strings.Repeat("A", issuer.MaxCSRText+4), issuer.ErrMalformedCSR},
		"tampered signature":      {base64.StdEncoding.EncodeToString(tampered), issuer.ErrCSRSignature},
		"SHA-1 signature":         {base64.StdEncoding.EncodeToString(sha1CSR(t, rsaKey(t, 2048))), issuer.ErrCSRSignature},
		"P-521 key":               {base64.StdEncoding.EncodeToString(newCSR(t, ecKey(t, elliptic.P521()), "d")), issuer.ErrCSRKey},
		"P-224 key":               {base64.StdEncoding.EncodeToString(newCSR(t, ecKey(t, elliptic.P224()), "d")), issuer.ErrCSRKey},
		"RSA-1024 key":            {base64.StdEncoding.EncodeToString(newCSR(t, rsaKey(t, 1024), "d")), issuer.ErrCSRKey},
		"Ed25519 key":             {base64.StdEncoding.EncodeToString(newCSR(t, edKey, "d")), issuer.ErrCSRKey},
		"base64 of PEM (doubled)": {base64.StdEncoding.EncodeToString([]byte(pemText)), issuer.ErrMalformedCSR},
	} {
		_, err := issuer.ParseCSR(tc.text)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: error %v, want %v", name, err, tc.want)
		}
	}
}

// TestParseCSRMessages: the refusal names what was wrong in words a device
// developer can act on.
func TestParseCSRMessages(t *testing.T) {
	_, err := issuer.ParseCSR(base64.StdEncoding.EncodeToString(newCSR(t, ecKey(t, elliptic.P521()), "d")))
	if err == nil || !strings.Contains(err.Error(), "P-521") || !strings.Contains(err.Error(), "P-256 or P-384") {
		t.Fatalf("P-521: %v", err)
	}
	_, err = issuer.ParseCSR(base64.StdEncoding.EncodeToString(newCSR(t, rsaKey(t, 1024), "d")))
	if err == nil || !strings.Contains(err.Error(), "1024 bits") {
		t.Fatalf("RSA-1024: %v", err)
	}
}

// FuzzParseCSR: any text either parses to a request whose key is accepted
// and whose signature verifies, or fails with one of the three errors;
// it never panics. The seeds are the accepted shapes and near misses.
func FuzzParseCSR(f *testing.F) {
	key := ecKey(f, elliptic.P256())
	der := newCSR(f, key, "fuzz-dev")
	f.Add(edgeCSR)
	f.Add(base64.StdEncoding.EncodeToString(der))
	f.Add(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})))
	f.Add(string(pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: der})))
	f.Add(base64.StdEncoding.EncodeToString(newCSR(f, rsaKey(f, 2048), "fuzz-rsa")))
	f.Add(base64.StdEncoding.EncodeToString(der[:len(der)/2]))
	f.Add("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, text string) {
		csr, err := issuer.ParseCSR(text)
		if err != nil {
			if csr != nil {
				t.Fatal("a request returned with an error")
			}
			if !errors.Is(err, issuer.ErrMalformedCSR) && !errors.Is(err, issuer.ErrCSRSignature) && !errors.Is(err, issuer.ErrCSRKey) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if issuer.CheckKey(csr.PublicKey) != nil || csr.CheckSignature() != nil {
			t.Fatalf("accepted a request with a refused key or a bad signature: %q", text)
		}
	})
}
