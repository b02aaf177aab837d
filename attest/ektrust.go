package attest

// Trust in EK certificates: TPM manufacturers' roots and intermediates, and
// optional revocation lists, given as data (reading them from files is the
// caller's I/O). An EKTrust verifies a parsed EK certificate's chain.

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// CertBundle is a set of trust material: roots (trust anchors),
// intermediates (which add no trust, only paths to a root) and revocation
// lists.
type CertBundle struct {
	Roots         []*x509.Certificate
	Intermediates []*x509.Certificate
	CRLs          []*x509.RevocationList
}

// Empty reports whether the bundle holds nothing.
func (b *CertBundle) Empty() bool {
	return b == nil || len(b.Roots)+len(b.Intermediates)+len(b.CRLs) == 0
}

// Add adds the certificates and CRLs of data (ParseTrustFile) to b:
// self-signed certificates as roots, the others as intermediates.
func (b *CertBundle) Add(data []byte) error {
	certs, crls, err := ParseTrustFile(data)
	if err != nil {
		return err
	}
	for _, c := range certs {
		if IsSelfSigned(c) {
			b.Roots = append(b.Roots, c)
		} else {
			b.Intermediates = append(b.Intermediates, c)
		}
	}
	b.CRLs = append(b.CRLs, crls...)
	return nil
}

// MaxTrustFileSize bounds one file of trust material (a vendor bundle of a
// few hundred certificates is under 1 MiB).
const MaxTrustFileSize = 16 << 20

// ErrBadTrustFile: a file of trust material holds something other than
// certificates and CRLs, or nothing.
var ErrBadTrustFile = errors.New("attest: bad certificate or CRL file")

// ParseTrustFile reads certificates and certificate revocation lists from
// one file's contents: any number of PEM blocks of type CERTIFICATE or
// X509 CRL (text between blocks, such as the comment headers of vendor
// bundles, is ignored), or a single DER certificate or DER CRL. Any other
// PEM block type, a block that does not parse, or a file with neither is
// an error (wrapping ErrBadTrustFile) that names the block.
func ParseTrustFile(data []byte) ([]*x509.Certificate, []*x509.RevocationList, error) {
	if len(data) > MaxTrustFileSize {
		return nil, nil, fmt.Errorf("%w: larger than %d bytes", ErrBadTrustFile, MaxTrustFileSize)
	}
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		if c, err := x509.ParseCertificate(data); err == nil {
			return []*x509.Certificate{c}, nil, nil
		}
		if l, err := x509.ParseRevocationList(data); err == nil {
			return nil, []*x509.RevocationList{l}, nil
		}
		return nil, nil, fmt.Errorf("%w: neither PEM nor a DER certificate or CRL", ErrBadTrustFile)
	}
	var certs []*x509.Certificate
	var crls []*x509.RevocationList
	for n, rest := 1, data; ; n++ {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		switch blk.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: PEM block %d: %w", ErrBadTrustFile, n, err)
			}
			certs = append(certs, c)
		case "X509 CRL":
			l, err := x509.ParseRevocationList(blk.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: PEM block %d: %w", ErrBadTrustFile, n, err)
			}
			crls = append(crls, l)
		default:
			return nil, nil, fmt.Errorf("%w: PEM block %d is a %q (want CERTIFICATE or X509 CRL)", ErrBadTrustFile, n, blk.Type)
		}
	}
	if len(certs)+len(crls) == 0 {
		return nil, nil, fmt.Errorf("%w: no CERTIFICATE or X509 CRL PEM block", ErrBadTrustFile)
	}
	return certs, crls, nil
}

// ParseCRL reads one certificate revocation list given as PEM (a single
// X509 CRL block) or as base64 DER, as the service API carries them.
func ParseCRL(s string) (*x509.RevocationList, error) {
	der, err := decodePEMOrBase64(s, "X509 CRL", MaxTrustFileSize)
	if err != nil {
		return nil, fmt.Errorf("%w: CRL: %w", ErrBadTrustFile, err)
	}
	l, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadTrustFile, err)
	}
	return l, nil
}

// IsSelfSigned reports whether c names itself as issuer and its signature
// verifies with its own key: a root, as opposed to an intermediate.
func IsSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) &&
		c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// CertFingerprint is the SHA-256 of a certificate's DER: how a root is
// named when a caller must know which root a chain ends at.
type CertFingerprint [sha256.Size]byte

// FingerprintOf returns c's fingerprint.
func FingerprintOf(c *x509.Certificate) CertFingerprint { return sha256.Sum256(c.Raw) }

// EKTrust verifies EK certificate chains to a set of roots. Build it once
// (NewEKTrust parses nothing, it indexes) and share it: it is immutable and
// safe for concurrent use.
type EKTrust struct {
	roots, intermediates *x509.CertPool
	// crls are the revocation lists by raw issuer name; a list counts only
	// when its signature verifies with the issuer of the certificate it
	// would revoke.
	crls map[string][]*x509.RevocationList
}

// NewEKTrust returns the trust of b's roots, with its intermediates as
// possible paths and its CRLs as revocations. A bundle without roots trusts
// nothing: every Verify fails with ErrEKCertificateUntrusted.
func NewEKTrust(b *CertBundle) *EKTrust {
	t := &EKTrust{roots: x509.NewCertPool(), intermediates: x509.NewCertPool(), crls: map[string][]*x509.RevocationList{}}
	if b == nil {
		return t
	}
	for _, c := range b.Roots {
		t.roots.AddCert(c)
	}
	for _, c := range b.Intermediates {
		t.intermediates.AddCert(c)
	}
	for _, l := range b.CRLs {
		t.crls[string(l.RawIssuer)] = append(t.crls[string(l.RawIssuer)], l)
	}
	return t
}

// Verify checks c's chains at time now: each certificate's signature by its
// issuer, up to one of the roots; the validity periods; the constraints of
// the CAs on the path; and the revocation lists. Any key usage is accepted
// (EK certificates carry tcg-kp-EKCertificate, never clientAuth). It
// returns the chains that hold (leaf first, root last), or an error
// wrapping ErrEKCertificateExpired, ErrEKCertificateRevoked or
// ErrEKCertificateUntrusted.
//
// Revocation: a list counts only when its issuer signed it; a list past its
// nextUpdate still counts (an entry is never un-revoked), and a
// certificate without a list is taken as not revoked.
func (t *EKTrust) Verify(c *EKCertificate, now time.Time) ([][]*x509.Certificate, error) {
	if c == nil || c.Certificate == nil {
		return nil, fmt.Errorf("%w: no certificate", ErrBadEKCertificate)
	}
	chains, err := c.Certificate.Verify(x509.VerifyOptions{
		Roots:         t.roots,
		Intermediates: t.intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return nil, fmt.Errorf("%w: %w", ErrEKCertificateExpired, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrEKCertificateUntrusted, err)
	}
	if len(t.crls) == 0 {
		return chains, nil
	}
	kept := chains[:0]
	var revoked error
	for _, chain := range chains {
		if err := t.checkRevocation(chain); err != nil {
			revoked = err
			continue
		}
		kept = append(kept, chain)
	}
	if len(kept) == 0 {
		return nil, revoked
	}
	return kept, nil
}

// checkRevocation returns an error wrapping ErrEKCertificateRevoked when a
// CRL signed by the issuer of a certificate in chain (the root excepted)
// lists that certificate's serial number.
func (t *EKTrust) checkRevocation(chain []*x509.Certificate) error {
	for i := 0; i+1 < len(chain); i++ {
		cert, issuer := chain[i], chain[i+1]
		for _, l := range t.crls[string(cert.RawIssuer)] {
			if l.CheckSignatureFrom(issuer) != nil {
				continue
			}
			for _, e := range l.RevokedCertificateEntries {
				if e.SerialNumber != nil && e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
					return fmt.Errorf("%w: %q serial %s is on the revocation list of %q (revoked %s)",
						ErrEKCertificateRevoked, cert.Subject.String(), cert.SerialNumber.Text(16),
						issuer.Subject.String(), e.RevocationTime.UTC().Format(time.RFC3339))
				}
			}
		}
	}
	return nil
}

// ChainWindow returns the period in which every certificate of chain is
// valid: the latest notBefore and the earliest notAfter.
func ChainWindow(chain []*x509.Certificate) (notBefore, notAfter time.Time) {
	for i, c := range chain {
		if i == 0 || c.NotBefore.After(notBefore) {
			notBefore = c.NotBefore
		}
		if i == 0 || c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	return notBefore, notAfter
}
