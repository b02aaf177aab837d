package provision

// Which enrollment admits a TPM: an individual enrollment of its
// registration id (its EK enrolled one by one, optionally also requiring a
// valid EK certificate), or, when the id has none, a TPM enrollment group
// (an extension of this service) whose roots its EK certificate chains to.
//
// A group admits TPMs, not names: a TPM it admits registers under the id
// derived from its EK (attest.RegistrationID), never one of its choosing,
// so that one admitted TPM cannot take another device's registration. The
// decision is made before a challenge is issued, so no one gets a challenge
// for an EK that no enrollment or group admits; the challenge reference
// then names the group (by a digest of its id) and its key is derived over
// the group's id (tpm.go), so the SAS that answers it authenticates for
// that group only; and the register that follows repeats the decision with
// the certificate sent again. docs/SECURITY.md describes the flow.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// groupDigestSize is the size of the group digest in a group challenge reference.
const groupDigestSize = 8

// groupDigest names a group in a challenge reference: the first bytes of
// SHA-256 over its lowercased id. A collision among the groups of one
// store only makes a reference name the wrong group, whose key then does
// not verify the SAS: the key is derived over the full id.
type groupDigest [groupDigestSize]byte

// digestOfGroup returns the digest of group id.
func digestOfGroup(id string) groupDigest {
	sum := sha256.Sum256([]byte(strings.ToLower(id)))
	var d groupDigest
	copy(d[:], sum[:])
	return d
}

// tpmGroup is a TPM enrollment group ready to use. Immutable.
type tpmGroup struct {
	rec    *store.Group
	id     string // as stored
	digest groupDigest
	// roots are the fingerprints of the group's roots.
	roots map[attest.CertFingerprint]bool
	// manufacturer and model, when not empty, must equal the certificate's.
	manufacturer, model string
	// ekHashes, when not nil, is the allow-list of EK hashes (attest.EKHash).
	ekHashes map[[attest.EKHashSize]byte]bool
}

// newTPMGroup prepares TPM group g and adds its trust material to
// ekBundle. Unusable certificates, CRLs and hashes are skipped with a
// warning; a group left without roots, or with an allow-list of nothing
// usable, can admit no TPM and is left out (nil).
func (s *Service) newTPMGroup(ctx context.Context, g *store.Group, ekBundle *attest.CertBundle) *tpmGroup {
	warn := func(msg string, err error) {
		s.log.LogAttrs(ctx, slog.LevelWarn, msg, slog.String("groupId", g.EnrollmentGroupID), slog.String("error", err.Error()))
	}
	a := g.Attestation.TPM
	tg := &tpmGroup{rec: g, id: g.EnrollmentGroupID, digest: digestOfGroup(g.EnrollmentGroupID),
		roots: map[attest.CertFingerprint]bool{}, manufacturer: strings.TrimSpace(a.TPMManufacturer), model: strings.TrimSpace(a.TPMModel)}
	for _, r := range a.EKCertificateRoots {
		c, err := attest.ParseCertificate(r)
		if err != nil {
			warn("TPM group root certificate unusable: it can never verify", err)
			continue
		}
		tg.roots[attest.FingerprintOf(c)] = true
		ekBundle.Roots = append(ekBundle.Roots, c)
	}
	for _, r := range a.EKCertificateIntermediates {
		c, err := attest.ParseCertificate(r)
		if err != nil {
			warn("TPM group intermediate certificate unusable", err)
			continue
		}
		ekBundle.Intermediates = append(ekBundle.Intermediates, c)
	}
	for _, r := range a.EKCertificateCRLs {
		l, err := attest.ParseCRL(r)
		if err != nil {
			warn("TPM group revocation list unusable", err)
			continue
		}
		ekBundle.CRLs = append(ekBundle.CRLs, l)
	}
	if len(a.EndorsementKeyHashes) > 0 {
		tg.ekHashes = make(map[[attest.EKHashSize]byte]bool, len(a.EndorsementKeyHashes))
		for _, h := range a.EndorsementKeyHashes {
			d, err := attest.ParseEKHash(h)
			if err != nil {
				warn("TPM group EK hash unusable", err)
				continue
			}
			tg.ekHashes[d] = true
		}
	}
	switch {
	case len(tg.roots) == 0:
		warn("TPM group admits no TPM", errors.New("no usable root certificate"))
		return nil
	case tg.ekHashes != nil && len(tg.ekHashes) == 0:
		warn("TPM group admits no TPM", errors.New("no usable EK hash in its allow-list"))
		return nil
	}
	return tg
}

// serviceEKBundle returns a copy of the service's TPM roots to build a
// snapshot's EK trust on.
func (s *Service) serviceEKBundle() *attest.CertBundle {
	b := &attest.CertBundle{}
	if r := s.cfg.TPMRoots; r != nil {
		b.Roots = append(b.Roots, r.Roots...)
		b.Intermediates = append(b.Intermediates, r.Intermediates...)
		b.CRLs = append(b.CRLs, r.CRLs...)
	}
	return b
}

// newEKTrustIndex builds a snapshot's EK trust over b.
func (s *Service) newEKTrustIndex(b *attest.CertBundle) *ekTrustIndex {
	idx := &ekTrustIndex{service: map[attest.CertFingerprint]bool{}, cache: newEKCertCache()}
	if r := s.cfg.TPMRoots; r != nil {
		for _, c := range r.Roots {
			idx.service[attest.FingerprintOf(c)] = true
		}
	}
	if len(b.Roots) > 0 {
		idx.trust = attest.NewEKTrust(b)
	}
	return idx
}

// admits reports whether g admits a TPM whose EK certificate check is c
// (valid) and whose EK hashes to ekHash, or says why not.
func (g *tpmGroup) admits(c ekCheck, ekHash [attest.EKHashSize]byte) error {
	chained := false
	for r := range c.roots {
		if g.roots[r] {
			chained = true
			break
		}
	}
	switch {
	case !chained:
		return errors.New("does not chain to its roots")
	case g.manufacturer != "" && !attest.SameTPMName(g.manufacturer, c.cert.Manufacturer):
		return fmt.Errorf("TPM manufacturer %q is not %q", c.cert.Manufacturer, g.manufacturer)
	case g.model != "" && !attest.SameTPMName(g.model, c.cert.Model):
		return fmt.Errorf("TPM model %q is not %q", c.cert.Model, g.model)
	case g.ekHashes != nil && !g.ekHashes[ekHash]:
		return errors.New("EK is not on its allow-list")
	}
	return nil
}

// tpmAdmission is what admits a TPM: an individual enrollment or a group.
type tpmAdmission struct {
	enrollment *store.Enrollment
	group      *tpmGroup
}

// source describes the admission for the registration (register.go).
func (a tpmAdmission) source(regID string) source {
	if a.enrollment != nil {
		return enrollmentSource(a.enrollment)
	}
	return groupSource(a.group.rec, store.AttestationTPM, regID)
}

// admitTPM decides what admits the TPM of ek, which sent the base64 EK
// certificate cert (maybe ""), under id.RegistrationID. Every refusal is
// the one 401 (unauthorized) with the reason in the log; a store failure is
// an error. With observe, the certificate's outcome is reported
// (Observer.EKCertificateChecked): done for challenge requests only, so
// that a provisioning counts once.
//
// The certificate is checked before the id is looked up and whatever the
// id's enrollment says (see ekcert.go): its outcome and cost do not depend
// on which ids exist.
func (s *Service) admitTPM(ctx context.Context, id Identity, ek *attest.Public, cert string, observe bool) (tpmAdmission, error) {
	var snap *groupSnapshot
	var check ekCheck
	if cert != "" {
		var err error
		if snap, err = s.groups(ctx); err != nil {
			return tpmAdmission{}, fmt.Errorf("enrollment groups: %w", err)
		}
		check = s.checkEKCertificate(snap, ek, cert, s.cfg.Now())
		if observe && check.outcome != "" {
			s.observeEKCert(ctx, check.outcome)
		}
	}
	e, err := s.cfg.Store.GetEnrollment(ctx, id.RegistrationID)
	switch {
	case err == nil:
		return s.admitEnrollment(ctx, id, e, ek, check)
	case !errors.Is(err, store.ErrNotFound):
		return tpmAdmission{}, fmt.Errorf("read enrollment: %w", err)
	}
	// No individual enrollment: a TPM group may admit the TPM.
	if cert == "" {
		return tpmAdmission{}, unauthorized("no enrollment, and no EK certificate was sent for the TPM groups")
	}
	if check.err != nil {
		return tpmAdmission{}, unauthorized(fmt.Sprintf("no enrollment, and the EK certificate cannot admit the TPM to a group: %v", check.err))
	}
	if want := attest.RegistrationID(ek.Bytes()); id.RegistrationID != want {
		return tpmAdmission{}, unauthorized("no enrollment, and the registration id is not the one derived from the EK (" + want +
			"), the only one under which a TPM group admits it")
	}
	ekHash, err := attest.EKHash(ek)
	if err != nil {
		return tpmAdmission{}, unauthorized(err.Error())
	}
	// The reason names why each group refused, the first few of them.
	const maxReasons = 10
	var why []string
	for _, g := range snap.tpm {
		err := g.admits(check, ekHash)
		if err == nil {
			return tpmAdmission{group: g}, nil
		}
		if len(why) < maxReasons {
			why = append(why, g.id+": "+err.Error())
		}
	}
	if len(why) == 0 {
		return tpmAdmission{}, unauthorized("no enrollment, and there is no TPM group")
	}
	if n := len(snap.tpm) - len(why); n > 0 {
		why = append(why, fmt.Sprintf("and %d more groups", n))
	}
	return tpmAdmission{}, unauthorized(fmt.Sprintf("no enrollment, and no TPM group admits the EK certificate (manufacturer %q, model %q): %s",
		check.cert.Manufacturer, check.cert.Model, strings.Join(why, "; ")))
}

// admitEnrollment checks the individual enrollment e of the id against the
// EK sent and, if it requires one, the EK certificate's check: it must be
// valid and chain to one of the service's TPM roots.
func (s *Service) admitEnrollment(ctx context.Context, id Identity, e *store.Enrollment, ek *attest.Public, check ekCheck) (tpmAdmission, error) {
	if e.Attestation.Type != store.AttestationTPM || e.Attestation.TPM == nil {
		return tpmAdmission{}, unauthorized("enrollment is not of type tpm")
	}
	if !s.enrolledEKMatches(ctx, id, e, ek) {
		return tpmAdmission{}, unauthorized("endorsement key does not match the enrollment")
	}
	if !e.Attestation.TPM.RequireEKCertificate {
		if check.sent && check.err != nil {
			s.log.LogAttrs(ctx, slog.LevelDebug, "EK certificate not valid; the enrollment does not require one",
				slog.String("registrationId", id.RegistrationID), slog.String("reason", check.err.Error()))
		}
		return tpmAdmission{enrollment: e}, nil
	}
	switch {
	case !check.sent:
		return tpmAdmission{}, unauthorized("the enrollment requires an EK certificate and none was sent")
	case check.err != nil:
		return tpmAdmission{}, unauthorized(fmt.Sprintf("the enrollment requires a valid EK certificate: %v", check.err))
	case !check.service:
		return tpmAdmission{}, unauthorized("the enrollment requires an EK certificate that chains to the service's TPM roots (tpm-roots); this one chains only to a TPM group's")
	}
	return tpmAdmission{enrollment: e}, nil
}

// enrolledEKMatches reports whether the enrollment's EK is ek: identical
// bytes are the same key, and only a different encoding of the enrolled EK
// needs parsing to compare the public keys themselves.
func (s *Service) enrolledEKMatches(ctx context.Context, id Identity, e *store.Enrollment, ek *attest.Public) bool {
	if raw, err := base64.StdEncoding.DecodeString(e.Attestation.TPM.EndorsementKey); err == nil && bytes.Equal(raw, ek.Bytes()) {
		return true
	}
	enrolled, err := parsePublicB64(e.Attestation.TPM.EndorsementKey)
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelWarn, "enrolled endorsement key does not parse",
			slog.String("registrationId", id.RegistrationID), slog.String("error", err.Error()))
		return false
	}
	return enrolled.Equal(ek)
}

// tpmGroupOf returns the TPM group of a group challenge reference's
// digest, from the current snapshot; nil when there is none.
func (s *Service) tpmGroupOf(ctx context.Context, d groupDigest) (*tpmGroup, error) {
	snap, err := s.groups(ctx)
	if err != nil {
		return nil, err
	}
	return snap.tpmByDigest[d], nil
}
