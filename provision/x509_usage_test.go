package provision

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/devca"
)

// certUsage is what a generated certificate says about its key's use.
type certUsage struct {
	keyUsage x509.KeyUsage      // 0: no KeyUsage extension
	extUsage []x509.ExtKeyUsage // nil: no ExtendedKeyUsage extension
}

// issueWithUsage signs a certificate for cn with the given usages by ca,
// valid around the env's clock; isCA makes it an intermediate (path length
// 0) whose key is returned as a *devca.CA.
func (e *env) issueWithUsage(ca *devca.CA, cn string, u certUsage, isCA bool) *devca.CA {
	e.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		e.t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		e.t.Fatal(err)
	}
	now := e.clock.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     u.keyUsage,
		ExtKeyUsage:  u.extUsage,
	}
	if isCA {
		tmpl.BasicConstraintsValid, tmpl.IsCA, tmpl.MaxPathLenZero = true, true, true
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		e.t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		e.t.Fatal(err)
	}
	return &devca.CA{Cert: cert, Key: key}
}

// TestX509GroupKeyUsages: a group's CA vouches for device (TLS client)
// certificates only: the leaf and every intermediate must allow clientAuth
// (or carry no extended key usage, or anyExtendedKeyUsage, as Go's verifier
// reads them), and a leaf with a KeyUsage extension must allow
// digitalSignature, the use a TLS client makes of its key.
func TestX509GroupKeyUsages(t *testing.T) {
	e := newEnv(t)
	root, err := devca.NewRootCA("usage root", e.clock.Now(), 24*time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	e.putGroup(x509Group("usage", withCert(string(root.CertPEM())), nil))
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	sign := x509.KeyUsageDigitalSignature
	interClient := e.issueWithUsage(root, "inter client", certUsage{keyUsage: x509.KeyUsageCertSign, extUsage: client}, true)
	interServer := e.issueWithUsage(root, "inter server", certUsage{keyUsage: x509.KeyUsageCertSign, extUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, true)

	for _, tc := range []struct {
		name   string
		issuer *devca.CA
		usage  certUsage
		ok     bool
	}{
		{"clientAuth", root, certUsage{keyUsage: sign, extUsage: client}, true},
		{"no extended key usage", root, certUsage{keyUsage: sign}, true},
		{"no key usage extensions at all", root, certUsage{}, true},
		{"anyExtendedKeyUsage", root, certUsage{keyUsage: sign, extUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}, true},
		{"clientAuth and serverAuth", root, certUsage{keyUsage: sign, extUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}, true},
		{"serverAuth only", root, certUsage{keyUsage: sign, extUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, false},
		{"codeSigning only", root, certUsage{keyUsage: sign, extUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}, false},
		{"keyEncipherment without digitalSignature", root, certUsage{keyUsage: x509.KeyUsageKeyEncipherment, extUsage: client}, false},
		{"keyAgreement without digitalSignature", root, certUsage{keyUsage: x509.KeyUsageKeyAgreement}, false},
		{"through a clientAuth intermediate", interClient, certUsage{keyUsage: sign, extUsage: client}, true},
		{"through a serverAuth-only intermediate", interServer, certUsage{keyUsage: sign, extUsage: client}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			regID := "usage-" + strings.ReplaceAll(tc.name, " ", "-")
			leaf := e.issueWithUsage(tc.issuer, regID, tc.usage, false).Cert
			chain := []*x509.Certificate{leaf}
			if tc.issuer != root {
				chain = append(chain, tc.issuer.Cert)
			}
			id, err := e.connectX509(regID, chain...)
			switch {
			case tc.ok && (err != nil || id.GroupID != "usage"):
				t.Fatalf("refused: %+v, %v", id, err)
			case !tc.ok && !errors.Is(err, ErrNotAuthorized):
				t.Fatalf("accepted (%+v), want not authorized; err %v", id, err)
			}
		})
	}
}
