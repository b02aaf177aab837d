package provision

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"
)

func TestAuthenticateX509Unsupported(t *testing.T) {
	e := newEnv(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "dev-x"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Authenticate(e.ctx, Connect{ClientID: "dev-x", Username: username("dev-x"), PeerChain: []*x509.Certificate{cert}})
	if !errors.Is(err, ErrUnsupported) || errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("X.509 connect: %v", err)
	}
	// An X.509 identity (from a later implementation) cannot register yet.
	errorBody(t, e.svc.Register(e.ctx, Identity{RegistrationID: "dev-x", Method: AuthX509, Certificate: cert}, RegisterRequest{}, "tr"), ErrorCodeUnauthorized)
}
