package issuer

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
	"time"
)

// KeyType names the key of a CA that NewCA generates.
type KeyType string

// Key types of a generated CA. ECDSA P-256 is the default: the cheapest to
// sign with. The cloud's CAs are P-384.
const (
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyECDSAP384 KeyType = "ecdsa-p384"
	KeyRSA2048   KeyType = "rsa-2048"
	KeyRSA3072   KeyType = "rsa-3072"
	KeyRSA4096   KeyType = "rsa-4096"
)

// KeyTypes lists the key types NewCA accepts, default first.
func KeyTypes() []KeyType {
	return []KeyType{KeyECDSAP256, KeyECDSAP384, KeyRSA2048, KeyRSA3072, KeyRSA4096}
}

// ErrBadCA: CA material that cannot issue (files that do not parse, a key
// that does not match its certificate, a certificate that is no CA, a
// chain that does not end at a root or is too long).
var ErrBadCA = errors.New("issuer: unusable CA")

// CA is the built-in issuer: a CA certificate and its private key, held in
// memory, signing device certificates itself. Its certificate may be a
// self-signed root (what NewCA makes) or an intermediate given together
// with its root. Safe for concurrent use.
type CA struct {
	cert   *x509.Certificate
	chain  []*x509.Certificate // cert, then its issuers up to the root
	signer crypto.Signer
	rand   io.Reader
}

// NewCA generates a self-signed CA with a key of type kt, valid from now
// (less an hour, for clock skew) for validity, allowed to sign end-entity
// certificates only (path length zero).
func NewCA(kt KeyType, subject pkix.Name, now time.Time, validity time.Duration) (*CA, error) {
	key, err := generateKey(kt)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial(rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("issuer: creating the CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issuer: parsing the CA certificate: %w", err)
	}
	return &CA{cert: cert, chain: []*x509.Certificate{cert}, signer: key, rand: rand.Reader}, nil
}

// generateKey makes a CA key of type kt.
func generateKey(kt KeyType) (crypto.Signer, error) {
	var key crypto.Signer
	var err error
	switch kt {
	case KeyECDSAP256, "":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyECDSAP384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case KeyRSA2048:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case KeyRSA3072:
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	case KeyRSA4096:
		key, err = rsa.GenerateKey(rand.Reader, 4096)
	default:
		return nil, fmt.Errorf("issuer: unknown key type %q (want one of %s)", kt, joinKeyTypes())
	}
	if err != nil {
		return nil, fmt.Errorf("issuer: generating a %s key: %w", kt, err)
	}
	return key, nil
}

// joinKeyTypes lists KeyTypes for messages.
func joinKeyTypes() string {
	var names []string
	for _, k := range KeyTypes() {
		names = append(names, string(k))
	}
	return strings.Join(names, ", ")
}

// ParseCA reads a CA from PEM: certPEM holds the CA certificate, optionally
// followed by the certificates that issued it up to a self-signed root (at
// most MaxChainLength-1 certificates in all, so that a device's chain fits
// the Embedded C SDK); keyPEM holds its private key (PKCS #8, PKCS #1 RSA
// or SEC 1 EC), RSA of at least 2048 bits or ECDSA P-256, P-384 or P-521.
// The chain must end at a self-signed root, which brokers need in their
// trust store (mosquitto's cafile). Errors wrap ErrBadCA and never quote
// the key.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	chain, err := parseCertificates(certPEM)
	if err != nil {
		return nil, err
	}
	if len(chain) > MaxChainLength-1 {
		return nil, fmt.Errorf("%w: %d certificates: at most %d (the CA and its root) fit a device's chain of %d", ErrBadCA, len(chain), MaxChainLength-1, MaxChainLength)
	}
	for i, c := range chain {
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, fmt.Errorf("%w: certificate %d (%s) is not a CA", ErrBadCA, i+1, c.Subject)
		}
		if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
			return nil, fmt.Errorf("%w: certificate %d (%s) may not sign certificates (key usage)", ErrBadCA, i+1, c.Subject)
		}
		issuer := c
		if i+1 < len(chain) {
			issuer = chain[i+1]
		}
		if !bytes.Equal(c.RawIssuer, issuer.RawSubject) || c.CheckSignatureFrom(issuer) != nil {
			if i+1 < len(chain) {
				return nil, fmt.Errorf("%w: certificate %d (%s) is not issued by certificate %d", ErrBadCA, i+1, c.Subject, i+2)
			}
			return nil, fmt.Errorf("%w: the last certificate (%s) is not a self-signed root: append the root that issued it", ErrBadCA, c.Subject)
		}
	}
	signer, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, err
	}
	if err := checkSigningKey(signer.Public()); err != nil {
		return nil, err
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(chain[0].PublicKey) {
		return nil, fmt.Errorf("%w: the key does not belong to the CA certificate (%s)", ErrBadCA, chain[0].Subject)
	}
	return &CA{cert: chain[0], chain: chain, signer: signer, rand: rand.Reader}, nil
}

// parseCertificates reads every CERTIFICATE block of data.
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, fmt.Errorf("%w: text that is not PEM after certificate %d", ErrBadCA, len(out))
			}
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: a %q block among the certificates", ErrBadCA, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %w", ErrBadCA, len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no CERTIFICATE block", ErrBadCA)
	}
	return out, nil
}

// parsePrivateKey reads the first key block of keyPEM. Its errors never
// contain the key's bytes.
func parsePrivateKey(keyPEM []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return nil, fmt.Errorf("%w: no PEM private key", ErrBadCA)
	}
	var k any
	var err error
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("%w: a %q block where a private key was expected (encrypted keys are not supported)", ErrBadCA, b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: private key does not parse", ErrBadCA)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: private key cannot sign", ErrBadCA)
	}
	return s, nil
}

// checkSigningKey accepts the CA key types: RSA of at least 2048 bits,
// ECDSA on P-256, P-384 or P-521.
func checkSigningKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() >= MinRSABits {
			return nil
		}
		return fmt.Errorf("%w: RSA key of %d bits (at least %d)", ErrBadCA, k.N.BitLen(), MinRSABits)
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
	}
	return fmt.Errorf("%w: key type %T (want RSA or ECDSA P-256, P-384, P-521)", ErrBadCA, pub)
}

// Certificate returns the CA certificate that signs device certificates.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Chain returns the CA certificate and its issuers up to the root: what a
// broker trusts (its cafile) and what follows the leaf in a device's chain.
func (ca *CA) Chain() []*x509.Certificate { return append([]*x509.Certificate(nil), ca.chain...) }

// ChainPEM returns Chain as PEM, the CA first, the root last.
func (ca *CA) ChainPEM() []byte {
	var out bytes.Buffer
	for _, c := range ca.chain {
		_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return out.Bytes()
}

// KeyPEM returns the CA's private key as PKCS #8 PEM: a secret, to be
// written 0600 and never logged.
func (ca *CA) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(ca.signer)
	if err != nil {
		return nil, fmt.Errorf("issuer: encoding the CA key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// Issue signs a device certificate: req's subject, URI names and key, the
// validity of req ended no later than the CA certificate's, a random
// 127-bit serial number, key usage digitalSignature, extended key usage
// clientAuth and basic constraints CA:FALSE. It returns the certificate
// followed by Chain.
func (ca *CA) Issue(ctx context.Context, req Request) ([]*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if req.PublicKey == nil {
		return nil, fmt.Errorf("%w: no public key", ErrInvalidRequest)
	}
	notAfter := req.NotAfter
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	if !notAfter.After(req.NotBefore) {
		return nil, fmt.Errorf("%w: validity from %s to %s is empty (the CA certificate expires %s)",
			ErrInvalidRequest, req.NotBefore.UTC().Format(time.RFC3339), notAfter.UTC().Format(time.RFC3339),
			ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial(ca.rand)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               req.Subject,
		URIs:                  req.URIs,
		NotBefore:             req.NotBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(ca.rand, tmpl, ca.cert, req.PublicKey, ca.signer)
	if err != nil {
		return nil, fmt.Errorf("issuer: signing: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issuer: parsing the issued certificate: %w", err)
	}
	return append([]*x509.Certificate{leaf}, ca.chain...), nil
}

// randomSerial returns a positive serial number of 127 random bits (RFC
// 5280 allows 20 octets; CA/Browser Forum rules ask for 64 random bits).
func randomSerial(r io.Reader) (*big.Int, error) {
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return nil, fmt.Errorf("issuer: serial number randomness: %w", err)
	}
	b[0] &= 0x7f // positive and at most 16 octets in DER
	n := new(big.Int).SetBytes(b[:])
	if n.Sign() == 0 {
		n.SetInt64(1)
	}
	return n, nil
}
