package provision

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// X.509 attestation (docs/protocol.md section 8). The TLS listeners request a
// client certificate without verifying it, so the decision is made here, per
// enrollment, with the chain the device presented:
//
//   - the leaf's subject CN must equal the registration id (case-insensitively)
//     and the leaf must be within its validity period;
//   - an individual enrollment of type x509 pins the device certificate
//     (clientCertificates primary or secondary: the leaf must be that
//     certificate, or have its SHA-256 or, failing that, SHA-1 thumbprint);
//   - without an individual enrollment, an enrollment group of type x509
//     whose signingCertificates primary or secondary is a CA the chain
//     verifies to (the rest of the chain serving as intermediates), for TLS
//     client use: the leaf and every intermediate must allow clientAuth
//     (Go's verifier with KeyUsages [ClientAuth]: a certificate without an
//     extended key usage, or with anyExtendedKeyUsage, allows it too), and
//     a leaf with a KeyUsage extension must allow digitalSignature.
//
// caReferences (names of CA certificates registered with the service) are
// not supported: this service has no CA certificate registry, so such
// groups never match, and a warning says so.
//
// The TLS handshake has already proved that the device holds the leaf's
// private key (CertificateVerify), so a chain that checks out authenticates.

// MaxPeerChain bounds the certificates of a presented chain that are considered.
const MaxPeerChain = 8

// authX509 authenticates a CONNECT with no password by its TLS client
// certificate chain (leaf first).
func (s *Service) authX509(ctx context.Context, chain []*x509.Certificate, regID string) (Identity, error) {
	if len(chain) > MaxPeerChain {
		return Identity{}, notAuthorized("certificate chain of %d certificates, at most %d", len(chain), MaxPeerChain)
	}
	leaf := chain[0]
	if !strings.EqualFold(leaf.Subject.CommonName, regID) {
		return Identity{}, notAuthorized("certificate subject CN %q does not match the registration id", leaf.Subject.CommonName)
	}
	now := s.cfg.Now()
	if err := checkValidity(leaf, now); err != nil {
		return Identity{}, notAuthorized("certificate %w", err)
	}
	e, err := s.cfg.Store.GetEnrollment(ctx, regID)
	switch {
	case err == nil:
		if !isX509Enrollment(e) {
			s.tryX509GroupsAndDiscard(ctx, chain, now)
			return Identity{}, notAuthorized("individual enrollment is of type %q, not x509 with client certificates", e.Attestation.Type)
		}
		if !pins(e.Attestation.X509.ClientCertificates, leaf) {
			s.tryX509GroupsAndDiscard(ctx, chain, now)
			_, thumbprint := store.CertificateThumbprints(leaf)
			return Identity{}, notAuthorized("certificate is not the one the individual enrollment pins (sha256 %s)", thumbprint)
		}
		return Identity{RegistrationID: regID, Method: AuthX509, Certificate: leaf}, nil
	case !errors.Is(err, store.ErrNotFound):
		return Identity{}, unavailable("read enrollment: %w", err)
	}
	ca, why, err := s.matchX509Group(ctx, chain, now)
	switch {
	case err != nil:
		return Identity{}, unavailable("enrollment groups: %w", err)
	case ca == nil:
		return Identity{}, notAuthorized("no enrollment and %w", why)
	}
	return Identity{RegistrationID: regID, Method: AuthX509, Certificate: leaf,
		GroupID: ca.groupID, SigningCertificate: ca.cert}, nil
}

// matchX509Group is the group work of an X.509 CONNECT for an id without
// an individual enrollment: the first group CA the chain verifies to for
// TLS client use, or nil and why not. err is a store failure.
func (s *Service) matchX509Group(ctx context.Context, chain []*x509.Certificate, now time.Time) (ca *groupCA, why, err error) {
	leaf := chain[0]
	if !allowsSigning(leaf) {
		return nil, fmt.Errorf("no enrollment group takes it: certificate key usage does not allow digitalSignature (key usage %#x)", int(leaf.KeyUsage)), nil
	}
	snap, err := s.groups(ctx)
	if err != nil {
		return nil, nil, err
	}
	ca, verr := matchX509GroupCA(x509Candidates(snap, chain), chain, now, s.onX509Verify)
	switch {
	case ca != nil:
		return ca, nil, nil
	case verr != nil:
		return nil, fmt.Errorf("no enrollment group CA verifies the certificate chain (issuer %q): %w", leaf.Issuer.String(), verr), nil
	}
	return nil, fmt.Errorf("no enrollment group CA verifies the certificate chain (issuer %q is no group's CA)", leaf.Issuer.String()), nil
}

// tryX509GroupsAndDiscard does the group work of an X.509 CONNECT for an id
// without an individual enrollment and throws the outcome away, so that
// refusing an enrolled id costs what refusing an unknown one does.
func (s *Service) tryX509GroupsAndDiscard(ctx context.Context, chain []*x509.Certificate, now time.Time) {
	_, _, _ = s.matchX509Group(ctx, chain, now)
}

// checkValidity reports whether now is within cert's validity period.
func checkValidity(cert *x509.Certificate, now time.Time) error {
	switch {
	case now.Before(cert.NotBefore):
		return fmt.Errorf("not valid before %s", formatTime(cert.NotBefore))
	case now.After(cert.NotAfter):
		return fmt.Errorf("expired at %s", formatTime(cert.NotAfter))
	}
	return nil
}

// oidKeyUsage is the KeyUsage extension (RFC 5280, 4.2.1.3).
func oidKeyUsage() asn1.ObjectIdentifier { return asn1.ObjectIdentifier{2, 5, 29, 15} }

// allowsSigning reports whether cert's KeyUsage extension, if it has one,
// allows digitalSignature: what a TLS client does with its key
// (CertificateVerify). Go's verifier does not check KeyUsage at all.
func allowsSigning(cert *x509.Certificate) bool {
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(oidKeyUsage()) {
			return cert.KeyUsage&x509.KeyUsageDigitalSignature != 0
		}
	}
	return true
}

// isX509Enrollment reports whether e is an x509 enrollment pinning client certificates.
func isX509Enrollment(e *store.Enrollment) bool {
	return e.Attestation.Type == store.AttestationX509 && e.Attestation.X509 != nil &&
		e.Attestation.X509.ClientCertificates != nil
}

// pins reports whether the primary or secondary certificate of certs is
// leaf: the same DER when the record holds the certificate, else the same
// thumbprint as recorded in its info (SHA-256, or SHA-1 when that is all
// the record has).
func pins(certs *store.X509Certificates, leaf *x509.Certificate) bool {
	for _, p := range []*store.X509CertificateWithInfo{certs.Primary, certs.Secondary} {
		if p == nil {
			continue
		}
		if p.Certificate != "" {
			if pinned, err := attest.ParseCertificate(p.Certificate); err == nil {
				if bytes.Equal(pinned.Raw, leaf.Raw) {
					return true
				}
				continue
			}
		}
		if p.Info != nil && p.Info.MatchesCertificate(leaf) {
			return true
		}
	}
	return false
}

// groupSigningCerts parses the primary and secondary signing certificates
// of an x509 group; unusable ones are skipped.
func groupSigningCerts(g *store.Group) []*x509.Certificate {
	x := g.Attestation.X509
	if x == nil || x.SigningCertificates == nil {
		return nil
	}
	var out []*x509.Certificate
	for _, p := range []*store.X509CertificateWithInfo{x.SigningCertificates.Primary, x.SigningCertificates.Secondary} {
		if p == nil || p.Certificate == "" {
			continue
		}
		if c, err := attest.ParseCertificate(p.Certificate); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// x509Source re-reads what authenticated an X.509 connection: the individual
// enrollment, still pinning the certificate, or the group, still naming the
// CA the chain verified to, when no individual enrollment has appeared
// since. The certificate must still be valid.
func (s *Service) x509Source(ctx context.Context, id Identity) (source, error) {
	if id.Certificate == nil {
		return source{}, unauthorized("x509 identity without a certificate")
	}
	if err := checkValidity(id.Certificate, s.cfg.Now()); err != nil {
		return source{}, unauthorized("certificate " + err.Error())
	}
	return s.credentialSource(ctx, id, store.AttestationX509,
		func(e *store.Enrollment) bool {
			return isX509Enrollment(e) && pins(e.Attestation.X509.ClientCertificates, id.Certificate)
		},
		func(g *store.Group) bool {
			return g.Attestation.Type == store.AttestationX509 && namesCA(g, id.SigningCertificate)
		},
		"enrollment group no longer names the CA the certificate verified to")
}

// namesCA reports whether ca is one of g's signing certificates.
func namesCA(g *store.Group, ca *x509.Certificate) bool {
	if ca == nil {
		return false
	}
	for _, c := range groupSigningCerts(g) {
		if bytes.Equal(c.Raw, ca.Raw) {
			return true
		}
	}
	return false
}

// x509Result is registrationState.x509 for an X.509 identity: the device
// certificate and, through a group, the group and its signing certificate.
func x509Result(id Identity) *X509RegistrationResult {
	r := &X509RegistrationResult{CertificateInfo: store.NewX509CertificateInfo(id.Certificate), EnrollmentGroupID: id.GroupID}
	if id.SigningCertificate != nil {
		r.SigningCertificateInfo = store.NewX509CertificateInfo(id.SigningCertificate)
	}
	return r
}

// x509Candidates returns the group CAs that a certificate of chain names as
// its issuer, in group order without duplicates: by authority key id when
// the certificate has one and a CA has that subject key id, else by raw
// issuer name. Only these are verified.
func x509Candidates(snap *groupSnapshot, chain []*x509.Certificate) []*groupCA {
	var out []*groupCA
	add := func(cas []*groupCA) {
		for _, ca := range cas {
			dup := false
			for _, o := range out {
				if o == ca {
					dup = true
					break
				}
			}
			if !dup {
				out = append(out, ca)
			}
		}
	}
	for _, c := range chain {
		if byKey := snap.byKeyID[string(c.AuthorityKeyId)]; len(c.AuthorityKeyId) > 0 && len(byKey) > 0 {
			add(byKey)
			continue
		}
		add(snap.bySubject[string(c.RawIssuer)])
	}
	// Insertion sort by group order (the list is short).
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].order < out[j-1].order; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// matchX509GroupCA returns the first candidate CA (in group order) that the
// chain verifies to for TLS client use at now, or nil; lastErr is the last
// verification error, for the log. verified, when not nil, is told the
// group of every CA a verification was tried against (a test hook).
func matchX509GroupCA(cands []*groupCA, chain []*x509.Certificate, now time.Time, verified func(groupID string)) (*groupCA, error) {
	if len(cands) == 0 {
		return nil, nil
	}
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	var lastErr error
	for _, ca := range cands {
		if verified != nil {
			verified(ca.groupID)
		}
		_, err := chain[0].Verify(x509.VerifyOptions{
			Roots:         ca.roots,
			Intermediates: intermediates,
			CurrentTime:   now,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		if err == nil {
			return ca, nil
		}
		lastErr = err
	}
	return nil, lastErr
}
