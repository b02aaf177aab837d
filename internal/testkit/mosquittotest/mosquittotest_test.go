package mosquittotest_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/mosquittotest"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
)

// TestBrokerTakesClientCertificates: the broker accepts a client whose
// certificate its CA file trusts, with the CN as username, and logs it.
func TestBrokerTakesClientCertificates(t *testing.T) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "clients CA"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "dev1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	b := mosquittotest.Start(t, mosquittotest.Options{CAFile: caFile, ACL: "pattern readwrite devices/%u/#"})
	c := mqtttest.DialTLS(t, b.Addr, b.ClientTLS(&tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}))
	if code, _ := c.Connect("client-1", "", "", true, 30); code != 0 {
		t.Fatalf("CONNACK %d\n%s", code, b.Log())
	}
	if codes := c.Subscribe(1, "devices/dev1/#"); len(codes) != 1 || codes[0] != 1 {
		t.Fatalf("SUBACK %v", codes)
	}
	c.Publish("devices/dev1/t", 0, []byte("hi"))
	if topic, payload := c.ReadResponse(); topic != "devices/dev1/t" || string(payload) != "hi" {
		t.Fatalf("got %s %q", topic, payload)
	}
	testkit.Await(t, "the broker's log of the client", func() bool { return strings.Contains(b.Log(), "u'dev1'") })
}
