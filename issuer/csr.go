package issuer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// Bounds of ParseCSR.
const (
	// MaxCSRText is the longest CSR text accepted, in bytes (a PEM RSA-8192
	// request is about 3,000).
	MaxCSRText = 16 << 10
	// MinRSABits and MaxRSABits bound the RSA keys accepted. The upper
	// bound keeps a signature check cheap.
	MinRSABits = 2048
	MaxRSABits = 8192
)

// Errors of ParseCSR. Each is wrapped with a reason that may be shown to
// the device: it names only what the request itself contains.
var (
	// ErrMalformedCSR: the text is not a PKCS #10 request in base64 DER or PEM.
	ErrMalformedCSR = errors.New("malformed certificate signing request")
	// ErrCSRSignature: the request's signature does not verify with its key.
	ErrCSRSignature = errors.New("certificate signing request signature does not verify")
	// ErrCSRKey: the request's key is of a type or size not accepted.
	ErrCSRKey = errors.New("certificate signing request key not accepted")
)

// PEM types of a certificate request: RFC 7468's, and the one OpenSSL
// writes with -newhdr.
const (
	pemCSR    = "CERTIFICATE REQUEST"
	pemNewCSR = "NEW CERTIFICATE REQUEST"
)

// ParseCSR reads a certificate signing request as devices send it:
// standard padded base64 of the DER (the cloud's and every 2025 SDK's
// form; ASCII white space anywhere is ignored, as in line-wrapped base64)
// or a PEM block "CERTIFICATE REQUEST" or "NEW CERTIFICATE REQUEST" (the
// 2021 samples' form) with nothing but white space around it. The request
// must be one complete PKCS #10 structure whose signature, with SHA-256 or
// a stronger hash, verifies with its own key, an RSA key of MinRSABits-MaxRSABits bits or an ECDSA key on
// P-256 or P-384. Errors wrap ErrMalformedCSR, ErrCSRSignature or
// ErrCSRKey.
func ParseCSR(text string) (*x509.CertificateRequest, error) {
	if len(text) > MaxCSRText {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformedCSR, MaxCSRText)
	}
	der, err := csrDER(text)
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedCSR, err)
	}
	if alg := csr.PublicKeyAlgorithm; alg != x509.RSA && alg != x509.ECDSA {
		name := alg.String()
		if alg == x509.UnknownPublicKeyAlgorithm {
			name = "unknown"
		}
		return nil, fmt.Errorf("%w: %s key (accepted: RSA %d-%d bits, ECDSA P-256 or P-384)", ErrCSRKey, name, MinRSABits, MaxRSABits)
	}
	if err := CheckKey(csr.PublicKey); err != nil {
		return nil, err
	}
	switch csr.SignatureAlgorithm {
	case x509.SHA1WithRSA, x509.ECDSAWithSHA1, x509.DSAWithSHA1, x509.MD5WithRSA, x509.MD2WithRSA:
		return nil, fmt.Errorf("%w: signature algorithm %s is not accepted (use SHA-256 or stronger)", ErrCSRSignature, csr.SignatureAlgorithm)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCSRSignature, err)
	}
	return csr, nil
}

// csrDER returns the DER of a base64 or PEM request.
func csrDER(text string) ([]byte, error) {
	trimmed := strings.TrimSpace(text)
	if trimmed == "" {
		return nil, fmt.Errorf("%w: empty", ErrMalformedCSR)
	}
	if strings.HasPrefix(trimmed, "-----BEGIN") {
		block, rest := pem.Decode([]byte(trimmed))
		switch {
		case block == nil:
			return nil, fmt.Errorf("%w: PEM armour does not decode", ErrMalformedCSR)
		case block.Type != pemCSR && block.Type != pemNewCSR:
			return nil, fmt.Errorf("%w: PEM block is %q, want %q", ErrMalformedCSR, block.Type, pemCSR)
		case len(block.Headers) > 0:
			return nil, fmt.Errorf("%w: PEM block has headers", ErrMalformedCSR)
		case len(strings.TrimSpace(string(rest))) > 0:
			return nil, fmt.Errorf("%w: text after the PEM block", ErrMalformedCSR)
		}
		return block.Bytes, nil
	}
	compact := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, trimmed)
	der, err := base64.StdEncoding.Strict().DecodeString(compact)
	if err != nil {
		return nil, fmt.Errorf("%w: not standard padded base64 of DER, nor PEM: %v", ErrMalformedCSR, err)
	}
	return der, nil
}

// CheckKey accepts the key types dpsd certifies: RSA of MinRSABits to
// MaxRSABits bits and ECDSA on P-256 or P-384. Errors wrap ErrCSRKey.
func CheckKey(pub any) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < MinRSABits || n > MaxRSABits {
			return fmt.Errorf("%w: RSA key of %d bits (accepted: %d-%d bits, ECDSA P-256 or P-384)", ErrCSRKey, n, MinRSABits, MaxRSABits)
		}
		return nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return nil
		}
		return fmt.Errorf("%w: ECDSA key on %s (accepted: P-256 or P-384, RSA %d-%d bits)", ErrCSRKey, k.Curve.Params().Name, MinRSABits, MaxRSABits)
	}
	return fmt.Errorf("%w: not an RSA or ECDSA key (accepted: RSA %d-%d bits, ECDSA P-256 or P-384)", ErrCSRKey, MinRSABits, MaxRSABits)
}
