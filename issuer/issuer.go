// Package issuer signs operational certificates for devices: the room
// behind which dpsd's certificate authorities sit. The provisioning service
// decides what a certificate says (subject, names, validity) from the
// device's checked certificate signing request and its enrollment; an
// Issuer only signs it and returns the chain. The built-in CA (CA, in this
// package) is the first Issuer; an external one (step-ca's or Vault's sign
// API) is another implementation of the same interface, not a change to
// the service.
//
// ParseCSR reads the certificate signing request a device sends: base64
// DER or PEM, PKCS #10, its signature verified, RSA 2048-8192 bits or
// ECDSA P-256 or P-384 keys.
package issuer

import (
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"time"
)

// MaxChainLength is the most certificates an Issuer returns, leaf
// included: the Azure Embedded C SDK keeps the chain of a register answer
// in a fixed array of three (leaf, issuing CA, root), without a bounds
// check.
const MaxChainLength = 3

// Issuer signs device certificates. Implementations must be safe for
// concurrent use and must not log the request's key or their own.
type Issuer interface {
	// Issue signs a certificate that says exactly what req says and
	// returns the chain: the new certificate first, then its issuers up to
	// and including a self-signed root, at most MaxChainLength in all.
	Issue(ctx context.Context, req Request) ([]*x509.Certificate, error)
}

// Request is a certificate the service decided to issue.
type Request struct {
	// CSR is the device's request, its signature verified (ParseCSR); an
	// issuer that forwards CSRs to an external CA sends CSR.Raw.
	CSR *x509.CertificateRequest
	// PublicKey is the key to certify: the CSR's.
	PublicKey crypto.PublicKey
	// Subject is the certificate's subject.
	Subject pkix.Name
	// URIs are the certificate's URI subject alternative names.
	URIs []*url.URL
	// NotBefore and NotAfter bound the validity. An issuer may end it
	// earlier, never later: not after its own certificate's.
	NotBefore, NotAfter time.Time
}

// ErrInvalidRequest: a Request an issuer cannot sign (no key, an empty
// validity).
var ErrInvalidRequest = errors.New("issuer: invalid request")
