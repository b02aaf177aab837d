package attest

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/devca"
)

// TestParseCertificate: a certificate is accepted as PEM or as base64 DER,
// and everything else is an ErrBadCertificate naming the problem.
func TestParseCertificate(t *testing.T) {
	certPEM, _, err := devca.SelfSignedClient("dev-1", time.Unix(0, 0), time.Unix(2e9, 0))
	if err != nil {
		t.Fatal(err)
	}
	want, err := devca.ParseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string]string{
		"PEM":            string(certPEM),
		"PEM, padded":    "\n  " + string(certPEM) + "\n",
		"base64 DER":     base64.StdEncoding.EncodeToString(want.Raw),
		"base64, padded": " " + base64.StdEncoding.EncodeToString(want.Raw) + "\n",
	} {
		got, err := ParseCertificate(in)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !got.Equal(want) {
			t.Errorf("%s: parsed another certificate", name)
		}
	}
	for name, tc := range map[string]struct{ in, reason string }{
		"two PEM blocks": {string(certPEM) + string(certPEM), "more than one PEM block"},
		"key block":      {"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no PEM CERTIFICATE block"},
		"not base64":     {"not base64 !", "neither PEM nor base64 DER"},
		"not DER":        {base64.StdEncoding.EncodeToString([]byte("hello")), "x509"},
		"too long":       {strings.Repeat("A", MaxCertificateLength+4), "larger than"},
	} {
		_, err := ParseCertificate(tc.in)
		if !errors.Is(err, ErrBadCertificate) || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("%s: %v, want ErrBadCertificate mentioning %q", name, err, tc.reason)
		}
	}
}

// FuzzParseCertificate: certificates recorded through the service API
// (PEM or base64 DER) never panic the parser, what parses has a DER form,
// and every refusal is an ErrBadCertificate.
func FuzzParseCertificate(f *testing.F) {
	certPEM, _, err := devca.SelfSignedClient("fuzz", time.Unix(0, 0), time.Unix(1e9, 0))
	if err != nil {
		f.Fatal(err)
	}
	c, err := devca.ParseCert(certPEM)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(certPEM))
	f.Add(base64.StdEncoding.EncodeToString(c.Raw))
	f.Add("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	f.Add("not base64 !")
	f.Fuzz(func(t *testing.T, s string) {
		cert, err := ParseCertificate(s)
		switch {
		case err == nil && len(cert.Raw) == 0:
			t.Fatal("parsed certificate without DER")
		case err != nil && !errors.Is(err, ErrBadCertificate):
			t.Fatalf("untyped error: %v", err)
		}
	})
}
