package provision

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// Enrollment groups in memory. A CONNECT for an id without an individual
// enrollment is tried against the groups, and anyone can send such
// CONNECTs, so the per-attempt work must not include reading, decrypting
// or parsing the groups. The service keeps a snapshot of them, ready to
// use:
//
//   - symmetric-key groups as attest.GroupKeys (decoded keys with their
//     HMAC key schedule done), so that trying a group costs two SHA-256
//     blocks to derive the device key and one SAS MAC per group key;
//   - X.509 groups as parsed signing certificates, each with a one-root
//     pool, indexed by raw subject and by subject key id, so that a chain
//     is verified only against the CAs its certificates name as issuer
//     (raw issuer, or authority key id), never against every group.
//
// The snapshot is tagged with the store's groups revision
// (store.Store.GroupsRevision), which every group write bumps in its own
// transaction: each attempt reads the revision (one key) and a different
// value rebuilds the snapshot first. This works as well when other
// processes write the store (several nodes on one shared store): there is
// no in-process invalidation to miss. The revision is read before the
// groups are listed, so a write during a rebuild leaves the snapshot tagged
// with the older revision and the next attempt rebuilds again.
//
//   - TPM groups (tpmadmit.go) with their roots' fingerprints, filters
//     and the record itself, in id order and by the digest a group
//     challenge reference carries; and one EK certificate trust over the
//     service's TPM roots and every TPM group's roots, intermediates and
//     revocation lists, with its cache of verdicts (ekcert.go).
//
// The number of groups is bounded by the store (bolt.Options.MaxGroups,
// dpsd's max-groups), which bounds the work of a refused symmetric-key
// CONNECT.

// groupsListPage is the page size of a rebuild's listing.
const groupsListPage = store.MaxMaxItems

// groupSnapshot is the enrollment groups of one store revision, ready to
// use. Immutable once built.
type groupSnapshot struct {
	rev       uint64
	symmetric []symmetricGroup
	// bySubject and byKeyID index the X.509 groups' signing certificates
	// by raw subject and subject key id (as strings of the bytes).
	bySubject map[string][]*groupCA
	byKeyID   map[string][]*groupCA
	// tpm are the TPM groups in id order; tpmByDigest finds one by the
	// digest of its id.
	tpm         []*tpmGroup
	tpmByDigest map[groupDigest]*tpmGroup
	// ek is the EK certificate trust (the service's roots and the TPM
	// groups').
	ek *ekTrustIndex
}

// symmetricGroup is one symmetric-key group's keys.
type symmetricGroup struct {
	id   string
	keys []*attest.GroupKey // primary, then secondary
}

// groupCA is one signing certificate of an X.509 group.
type groupCA struct {
	groupID string
	order   int // the group's position in id order: the first group that verifies wins
	cert    *x509.Certificate
	roots   *x509.CertPool // cert alone
}

// groupCache holds the current snapshot. Safe for concurrent use: readers
// load it without locking; rebuilds are serialised.
type groupCache struct {
	cur     atomic.Pointer[groupSnapshot]
	rebuild sync.Mutex
}

// groups returns the snapshot of the store's current groups revision,
// rebuilding it first when the revision moved.
func (s *Service) groups(ctx context.Context) (*groupSnapshot, error) {
	rev, err := s.cfg.Store.GroupsRevision(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the groups revision: %w", err)
	}
	if snap := s.groupCache.cur.Load(); snap != nil && snap.rev == rev {
		return snap, nil
	}
	s.groupCache.rebuild.Lock()
	defer s.groupCache.rebuild.Unlock()
	// Another attempt may have rebuilt while this one waited: read again.
	if rev, err = s.cfg.Store.GroupsRevision(ctx); err != nil {
		return nil, fmt.Errorf("read the groups revision: %w", err)
	}
	if snap := s.groupCache.cur.Load(); snap != nil && snap.rev == rev {
		return snap, nil
	}
	start := time.Now()
	snap, err := s.buildGroupSnapshot(ctx, rev)
	if err != nil {
		return nil, err
	}
	s.groupCache.cur.Store(snap)
	s.log.LogAttrs(ctx, slog.LevelDebug, "enrollment groups loaded",
		slog.Uint64("revision", rev), slog.Int("symmetricKey", len(snap.symmetric)),
		slog.Int("x509Certificates", countCAs(snap)), slog.Int("tpm", len(snap.tpm)),
		slog.Duration("took", time.Since(start)))
	return snap, nil
}

// countCAs counts the indexed signing certificates.
func countCAs(snap *groupSnapshot) int {
	n := 0
	for _, cas := range snap.bySubject {
		n += len(cas)
	}
	return n
}

// buildGroupSnapshot lists every group and prepares its key material.
// Unusable keys and certificates are skipped with a warning: a group that
// cannot match is no reason to refuse the others.
func (s *Service) buildGroupSnapshot(ctx context.Context, rev uint64) (*groupSnapshot, error) {
	snap := &groupSnapshot{rev: rev, bySubject: map[string][]*groupCA{}, byKeyID: map[string][]*groupCA{},
		tpmByDigest: map[groupDigest]*tpmGroup{}}
	// The EK trust starts from the service's TPM roots; TPM groups add theirs.
	ekBundle := s.serviceEKBundle()
	q := store.Query{MaxItems: groupsListPage}
	order := 0
	for {
		page, err := s.cfg.Store.ListGroups(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("list enrollment groups: %w", err)
		}
		for _, g := range page.Items {
			s.addToSnapshot(ctx, snap, g, order, ekBundle)
			order++
		}
		if page.Continuation == "" {
			snap.ek = s.newEKTrustIndex(ekBundle)
			return snap, nil
		}
		q.Continuation = page.Continuation
	}
}

// addToSnapshot adds group g, at position order, to snap; a TPM group's
// trust material also goes to ekBundle.
func (s *Service) addToSnapshot(ctx context.Context, snap *groupSnapshot, g *store.Group, order int, ekBundle *attest.CertBundle) {
	warn := func(msg string, err error) {
		s.log.LogAttrs(ctx, slog.LevelWarn, msg, slog.String("groupId", g.EnrollmentGroupID), slog.String("error", err.Error()))
	}
	switch a := g.Attestation; {
	case a.Type == store.AttestationSymmetricKey && a.SymmetricKey != nil:
		sg := symmetricGroup{id: g.EnrollmentGroupID}
		for _, k := range []string{a.SymmetricKey.PrimaryKey, a.SymmetricKey.SecondaryKey} {
			if k == "" {
				continue
			}
			raw, err := attest.DecodeSymmetricKey(k)
			if err == nil {
				var gk *attest.GroupKey
				if gk, err = attest.NewGroupKey(raw); err == nil {
					sg.keys = append(sg.keys, gk)
				}
				clear(raw)
			}
			if err != nil {
				warn("enrollment group key unusable: the key can never verify", err)
			}
		}
		if len(sg.keys) > 0 {
			snap.symmetric = append(snap.symmetric, sg)
		}
	case a.Type == store.AttestationX509 && a.X509 != nil && a.X509.SigningCertificates != nil:
		for _, p := range []*store.X509CertificateWithInfo{a.X509.SigningCertificates.Primary, a.X509.SigningCertificates.Secondary} {
			if p == nil || p.Certificate == "" {
				continue
			}
			cert, err := attest.ParseCertificate(p.Certificate)
			if err != nil {
				warn("enrollment group signing certificate unusable: it can never verify", err)
				continue
			}
			roots := x509.NewCertPool()
			roots.AddCert(cert)
			ca := &groupCA{groupID: g.EnrollmentGroupID, order: order, cert: cert, roots: roots}
			snap.bySubject[string(cert.RawSubject)] = append(snap.bySubject[string(cert.RawSubject)], ca)
			if len(cert.SubjectKeyId) > 0 {
				snap.byKeyID[string(cert.SubjectKeyId)] = append(snap.byKeyID[string(cert.SubjectKeyId)], ca)
			}
		}
	case a.Type == store.AttestationTPM && a.TPM != nil:
		if tg := s.newTPMGroup(ctx, g, ekBundle); tg != nil {
			snap.tpm = append(snap.tpm, tg)
			snap.tpmByDigest[tg.digest] = tg
		}
	case a.Type == store.AttestationX509 && a.X509 != nil && a.X509.CAReferences != nil:
		s.log.LogAttrs(ctx, slog.LevelWarn, "enrollment group names caReferences, which are not supported (no CA certificate registry); give signingCertificates instead",
			slog.String("groupId", g.EnrollmentGroupID))
	}
}
