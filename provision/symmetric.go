package provision

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// SymmetricKeyName is the only skn a symmetric-key SAS token may carry (the
// Azure SDKs send it; the Node SDK sends none). Any other skn must be a TPM
// challenge reference.
const SymmetricKeyName = "registration"

// authSymmetric verifies a SAS signed with an individual enrollment's primary
// or secondary key or, when the id has no individual enrollment, with a key
// derived from a symmetric-key enrollment group's key. An individual
// enrollment takes precedence: its existence rules the groups out.
//
// The groups are tried from memory (groups.go): the token's claims once,
// then one derivation and one MAC per group key. A refusal of an id with
// an individual enrollment does the same group work and discards it, so
// that the time of a refusal does not tell enrolled ids from unknown ones.
func (s *Service) authSymmetric(ctx context.Context, tok *attest.SASToken, resource, spelledID string) (Identity, error) {
	regID := strings.ToLower(spelledID)
	now := s.cfg.Now()
	e, err := s.cfg.Store.GetEnrollment(ctx, regID)
	switch {
	case err == nil:
		if e.Attestation.Type != store.AttestationSymmetricKey || e.Attestation.SymmetricKey == nil {
			s.tryGroupsAndDiscard(ctx, tok, resource, spelledID, now)
			return Identity{}, notAuthorized("individual enrollment is of type %q, not symmetricKey", e.Attestation.Type)
		}
		// reason keeps the most telling failure: a key whose signature
		// matched says why (expired, other resource) better than the other key.
		var reason error = errors.New("enrollment has no keys")
		first := true
		for _, k := range []string{e.Attestation.SymmetricKey.PrimaryKey, e.Attestation.SymmetricKey.SecondaryKey} {
			if k == "" {
				continue
			}
			key, err := attest.DecodeSymmetricKey(k)
			if err != nil {
				err = fmt.Errorf("enrollment key: %w", err)
			} else if err = tok.Verify(key, resource, now, s.cfg.SAS); err == nil {
				return Identity{RegistrationID: regID, Method: AuthSymmetricKey, keyHash: symmetricKeyHash(key)}, nil
			}
			if first || errors.Is(reason, attest.ErrSASSignature) {
				reason, first = err, false
			}
		}
		s.tryGroupsAndDiscard(ctx, tok, resource, spelledID, now)
		return Identity{}, notAuthorized("SAS does not verify with the enrollment's keys: %w", reason)
	case !errors.Is(err, store.ErrNotFound):
		return Identity{}, unavailable("read enrollment: %w", err)
	}
	// The resource and expiry do not depend on the group: checked once.
	if err := tok.VerifyClaims(resource, now, s.cfg.SAS); err != nil {
		return Identity{}, notAuthorized("no enrollment, and the SAS cannot verify with any group key: %w", err)
	}
	snap, err := s.groups(ctx)
	if err != nil {
		return Identity{}, unavailable("enrollment groups: %w", err)
	}
	groupID, devKey := matchSymmetricGroup(snap, tok, spelledID)
	if groupID == "" {
		return Identity{}, notAuthorized("no enrollment and no enrollment group key verifies")
	}
	id := Identity{RegistrationID: regID, Method: AuthSymmetricKey, GroupID: groupID, keyHash: symmetricKeyHash(devKey[:])}
	clear(devKey[:])
	return id, nil
}

// tryGroupsAndDiscard does the group work of a symmetric-key CONNECT for an
// id without an individual enrollment and throws the outcome away (see
// authSymmetric).
func (s *Service) tryGroupsAndDiscard(ctx context.Context, tok *attest.SASToken, resource, spelledID string, now time.Time) {
	if tok.VerifyClaims(resource, now, s.cfg.SAS) != nil {
		return
	}
	if snap, err := s.groups(ctx); err == nil {
		_, devKey := matchSymmetricGroup(snap, tok, spelledID)
		clear(devKey[:])
	}
}

// matchSymmetricGroup returns the first symmetric-key group (in id order)
// one of whose keys, derived for spelledID, signed tok, and that device
// key; "" when none did. tok's claims (resource, expiry) are checked by the
// caller once: only the signature depends on the group. Every group costs
// the same whatever the token: one derivation and one MAC per group key,
// compared in constant time.
func matchSymmetricGroup(snap *groupSnapshot, tok *attest.SASToken, spelledID string) (string, [32]byte) {
	d := attest.NewDeviceKeyDeriver(spelledID)
	for _, g := range snap.symmetric {
		for _, k := range g.keys {
			dk := d.Derive(k)
			if tok.VerifySignature(dk[:]) == nil {
				return g.id, dk
			}
			clear(dk[:])
		}
	}
	return "", [32]byte{}
}

// symmetricSource re-reads what a symmetric-key connection authenticated
// against: the individual enrollment, or the group when one matched and no
// individual enrollment has appeared since.
func (s *Service) symmetricSource(ctx context.Context, id Identity) (source, error) {
	return s.credentialSource(ctx, id, store.AttestationSymmetricKey,
		func(e *store.Enrollment) bool { return e.Attestation.Type == store.AttestationSymmetricKey },
		func(g *store.Group) bool { return g.Attestation.Type == store.AttestationSymmetricKey },
		"enrollment group is no longer symmetricKey")
}
