package issuer_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/issuer"
)

// request is a device certificate request for cn with a fresh P-256 key.
func request(t *testing.T, cn string, now time.Time) issuer.Request {
	t.Helper()
	csr, err := issuer.ParseCSR(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: newCSR(t, ecKey(t, elliptic.P256()), cn)})))
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("dpsd://0ne00000001/registrations/" + cn)
	return issuer.Request{CSR: csr, PublicKey: csr.PublicKey, Subject: pkix.Name{CommonName: cn},
		URIs: []*url.URL{u}, NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(30 * 24 * time.Hour)}
}

// verifyClient checks chain[0] as a TLS client certificate against the
// last element of chain as the only root.
func verifyClient(t *testing.T, chain []*x509.Certificate, at time.Time) {
	t.Helper()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(chain[len(chain)-1])
	for _, c := range chain[1 : len(chain)-1] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("issued chain does not verify for client auth: %v", err)
	}
}

func TestCAIssuesEveryKeyType(t *testing.T) {
	now := time.Now()
	for _, kt := range issuer.KeyTypes() {
		if kt == issuer.KeyRSA4096 && testing.Short() {
			continue
		}
		ca, err := issuer.NewCA(kt, pkix.Name{CommonName: "test CA " + string(kt)}, now, 24*time.Hour*365)
		if err != nil {
			t.Fatalf("%s: %v", kt, err)
		}
		req := request(t, "dev-"+string(kt), now)
		chain, err := ca.Issue(context.Background(), req)
		if err != nil {
			t.Fatalf("%s: %v", kt, err)
		}
		if len(chain) != 2 || chain[1] != ca.Certificate() {
			t.Fatalf("%s: chain of %d, want leaf and the CA", kt, len(chain))
		}
		leaf := chain[0]
		verifyClient(t, chain, now)
		if leaf.Subject.CommonName != req.Subject.CommonName || len(leaf.URIs) != 1 || leaf.URIs[0].String() != req.URIs[0].String() {
			t.Fatalf("%s: subject %s URIs %v", kt, leaf.Subject, leaf.URIs)
		}
		if leaf.IsCA || !leaf.BasicConstraintsValid || leaf.KeyUsage != x509.KeyUsageDigitalSignature ||
			len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
			t.Fatalf("%s: CA %v usage %v ext %v", kt, leaf.IsCA, leaf.KeyUsage, leaf.ExtKeyUsage)
		}
		if !leaf.NotBefore.Equal(req.NotBefore.Truncate(time.Second)) || !leaf.NotAfter.Equal(req.NotAfter.Truncate(time.Second)) {
			t.Fatalf("%s: validity %v-%v", kt, leaf.NotBefore, leaf.NotAfter)
		}
		if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 127 {
			t.Fatalf("%s: serial %v", kt, leaf.SerialNumber)
		}
		if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(req.PublicKey) {
			t.Fatalf("%s: certified another key", kt)
		}
		// What the data directory keeps reads back as the same CA.
		keyPEM, err := ca.KeyPEM()
		if err != nil {
			t.Fatal(err)
		}
		again, err := issuer.ParseCA(ca.ChainPEM(), keyPEM)
		if err != nil {
			t.Fatalf("%s: ParseCA of its own PEM: %v", kt, err)
		}
		if !again.Certificate().Equal(ca.Certificate()) {
			t.Fatalf("%s: another certificate read back", kt)
		}
	}
}

func TestCASerialsDiffer(t *testing.T) {
	now := time.Now()
	ca, err := issuer.NewCA(issuer.KeyECDSAP256, pkix.Name{CommonName: "ca"}, now, time.Hour*24)
	if err != nil {
		t.Fatal(err)
	}
	req := request(t, "dev", now)
	seen := map[string]bool{}
	for range 50 {
		chain, err := ca.Issue(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		s := chain[0].SerialNumber.String()
		if seen[s] {
			t.Fatalf("serial %s issued twice", s)
		}
		seen[s] = true
	}
}

func TestCAValidityEndsWithTheCA(t *testing.T) {
	now := time.Now()
	ca, err := issuer.NewCA(issuer.KeyECDSAP256, pkix.Name{CommonName: "short CA"}, now, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Issue(context.Background(), request(t, "dev", now))
	if err != nil {
		t.Fatal(err)
	}
	if !chain[0].NotAfter.Equal(ca.Certificate().NotAfter) {
		t.Fatalf("leaf ends %v, CA %v", chain[0].NotAfter, ca.Certificate().NotAfter)
	}
	late := request(t, "dev", now.Add(72*time.Hour))
	if _, err := ca.Issue(context.Background(), late); !errors.Is(err, issuer.ErrInvalidRequest) {
		t.Fatalf("issuing past the CA's end: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ca.Issue(ctx, request(t, "dev", now)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

// TestParseCAOperatorChain: an operator's intermediate with its root
// issues chains of three that verify against the root alone.
func TestParseCAOperatorChain(t *testing.T) {
	now := time.Now()
	// An operator's root that may issue one CA below it.
	rootKey := mustKey(t)
	rootCert := selfSigned(t, rootKey, "operator root", 1)
	interKey := mustKey(t)
	interCert := signed(t, interKey, "operator issuing CA", rootCert, rootKey, true)
	certPEM := append(pemCert(interCert), pemCert(rootCert)...)
	ca, err := issuer.ParseCA(certPEM, pemKey(t, interKey))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Issue(context.Background(), request(t, "dev-op", now))
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != issuer.MaxChainLength || !chain[2].Equal(rootCert) || !chain[1].Equal(interCert) {
		t.Fatalf("chain of %d", len(chain))
	}
	verifyClient(t, chain, now)
	if !bytes.Equal(ca.ChainPEM(), certPEM) {
		t.Fatal("ChainPEM is not the CA and its root as given")
	}

	for name, tc := range map[string]struct {
		cert, key []byte
		want      string
	}{
		"intermediate without its root": {pemCert(interCert), pemKey(t, interKey), "not a self-signed root"},
		"root before intermediate":      {append(pemCert(rootCert), pemCert(interCert)...), pemKey(t, interKey), "not issued by"},
		"three certificates":            {append(certPEM, pemCert(rootCert)...), pemKey(t, interKey), "at most 2"},
		"key of another CA":             {certPEM, pemKey(t, rootKey), "does not belong"},
		"leaf as CA":                    {pemCert(signed(t, mustKey(t), "leaf", rootCert, rootKey, false)), pemKey(t, interKey), "not a CA"},
		"no certificate":                {nil, pemKey(t, interKey), "no CERTIFICATE"},
		"no key":                        {certPEM, nil, "no PEM private key"},
		"garbage key":                   {certPEM, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), "does not parse"},
	} {
		_, err := issuer.ParseCA(tc.cert, tc.key)
		if !errors.Is(err, issuer.ErrBadCA) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrBadCA saying %q", name, err, tc.want)
		}
	}
}

// TestParseCAErrorsNeverQuoteTheKey: a key that does not parse is not
// echoed in the error (errors reach the log).
func TestParseCAErrorsNeverQuoteTheKey(t *testing.T) {
	k := pemKey(t, mustKey(t))
	broken := bytes.Replace(k, []byte("MI"), []byte("MX"), 1)
	_, err := issuer.ParseCA(pemCert(selfSigned(t, mustKey(t), "r", 0)), broken)
	if err == nil {
		t.Fatal("broken key accepted")
	}
	body := string(bytes.Split(k, []byte("\n"))[1])
	if strings.Contains(err.Error(), body[:16]) {
		t.Fatalf("error quotes the key: %v", err)
	}
}

func mustKey(t *testing.T) *ecdsa.PrivateKey { return ecKey(t, elliptic.P256()) }

func selfSigned(t *testing.T, key *ecdsa.PrivateKey, cn string, pathLen int) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: randSerial(t), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour * 3650), IsCA: true, BasicConstraintsValid: true, MaxPathLen: pathLen, MaxPathLenZero: pathLen == 0,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func signed(t *testing.T, key *ecdsa.PrivateKey, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: randSerial(t), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour * 365), IsCA: isCA, BasicConstraintsValid: true, MaxPathLenZero: isCA}
	if isCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func randSerial(t *testing.T) *big.Int {
	n, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func pemKey(t *testing.T, k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
