package device

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
)

// API versions of the two certificate signing request shapes.
const (
	// CSRAPIVersion is the api-version under which the CSR goes in "csr"
	// and the chain comes back in issuedCertificateChain (the Embedded C,
	// .NET and Java preview clients); the default when
	// Config.CertificateKey is set.
	CSRAPIVersion = "2025-07-01-preview"
	// CSRAPIVersion2021 is the api-version of IoT Edge's identity service:
	// "clientCertificateCsr" and issuedClientCertificate (PEM).
	CSRAPIVersion2021 = "2021-11-01-preview"
)

// ErrCertificateNotIssued: the service answered the certificate signing
// request with its "not configured" failure (errorCode 400000, "Device sent
// CSR but it is not configured in the service."): the enrollment issues no
// certificates. The same register without Config.CertificateKey is
// assigned. Provision returns it wrapped in an *Error with the Result.
var ErrCertificateNotIssued = errors.New("device: the service issues no certificate to this device")

// csrNotConfigured is the message of that failure, matched exactly as IoT
// Edge's identity service does.
const csrNotConfigured = "Device sent CSR but it is not configured in the service."

// IssuedCertificate describes the certificate a Result carries.
type IssuedCertificate struct {
	Subject          string    `json:"subject"`
	Issuer           string    `json:"issuer"`
	SerialNumber     string    `json:"serialNumber"`
	SHA256Thumbprint string    `json:"sha256Thumbprint"`
	NotBefore        time.Time `json:"notBefore"`
	NotAfter         time.Time `json:"notAfter"`
	URIs             []string  `json:"uris,omitempty"`
	// ChainLength counts the certificates of the chain, the leaf included.
	ChainLength int `json:"chainLength"`
}

// newCSR builds the certificate signing request for key: subject CN the
// registration id and nothing else, signed by key (SHA-256 for EC keys of
// P-256 and RSA, SHA-384 for P-384, as crypto/x509 picks), as base64 DER.
func newCSR(key crypto.Signer, registrationID string) (string, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: registrationID}}, key)
	if err != nil {
		return "", fmt.Errorf("device: certificate signing request: %w", err)
	}
	return base64.StdEncoding.EncodeToString(der), nil
}

// csrField returns the register field of a CSR under apiVersion.
func csrField(apiVersion string) string {
	if apiVersion == CSRAPIVersion2021 {
		return "clientCertificateCsr"
	}
	return "csr"
}

// issuedChain reads the chain of a final registrationState, in whichever
// shape it came (issuedCertificateChain: base64 DER strings;
// issuedClientCertificate: PEM), and checks that its leaf certifies key
// for registrationID.
func issuedChain(st RegistrationState, key crypto.PublicKey, registrationID string) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	switch {
	case len(st.IssuedCertificateChain) > 0:
		for i, s := range st.IssuedCertificateChain {
			der, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return nil, fmt.Errorf("%w: issuedCertificateChain[%d]: %v", ErrProtocol, i, err)
			}
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return nil, fmt.Errorf("%w: issuedCertificateChain[%d]: %v", ErrProtocol, i, err)
			}
			chain = append(chain, c)
		}
	case st.IssuedClientCertificate != "":
		rest := []byte(st.IssuedClientCertificate)
		for {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil || b.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("%w: issuedClientCertificate: block %d (%s): %v", ErrProtocol, len(chain)+1, b.Type, err)
			}
			chain = append(chain, c)
		}
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: assigned without the certificate asked for", ErrProtocol)
	}
	leaf := chain[0]
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key) {
		return nil, fmt.Errorf("%w: the issued certificate is for another key", ErrProtocol)
	}
	if !strings.EqualFold(leaf.Subject.CommonName, registrationID) {
		return nil, fmt.Errorf("%w: the issued certificate names %q, not this device", ErrProtocol, leaf.Subject.CommonName)
	}
	return chain, nil
}

// describeCertificate fills an IssuedCertificate.
func describeCertificate(chain []*x509.Certificate) *IssuedCertificate {
	leaf := chain[0]
	sum := sha256.Sum256(leaf.Raw)
	out := &IssuedCertificate{
		Subject: leaf.Subject.String(), Issuer: leaf.Issuer.String(),
		SerialNumber:     strings.ToUpper(leaf.SerialNumber.Text(16)),
		SHA256Thumbprint: strings.ToUpper(hex.EncodeToString(sum[:])),
		NotBefore:        leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), ChainLength: len(chain),
	}
	for _, u := range leaf.URIs {
		out.URIs = append(out.URIs, u.String())
	}
	return out
}

// CertificatePEM returns a Result's certificate as the PEM a TLS client
// presents: the leaf, then the intermediates; a self-signed root at the
// end of the chain is left out (brokers have it; see
// Result.CertificateChain for all).
func (r *Result) CertificatePEM() []byte {
	var out []byte
	for i, c := range r.CertificateChain {
		if i > 0 && i == len(r.CertificateChain)-1 && isSelfSigned(c) {
			break
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// isSelfSigned reports whether c is a root: issued by itself.
func isSelfSigned(c *x509.Certificate) bool {
	return string(c.RawIssuer) == string(c.RawSubject) && c.CheckSignatureFrom(c) == nil
}
