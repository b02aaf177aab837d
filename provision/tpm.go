package provision

// TPM attestation (docs/protocol.md section 5), in the order a device meets it:
//
//  1. challenge: on a restricted session (no credential), a register with
//     tpm is answered 401 with an activation blob that carries a challenge
//     key, derived for a fresh challenge reference;
//  2. authTPM: the device reconnects with a SAS token signed with that key,
//     its skn the reference;
//  3. registerTPM: on that connection the device registers again, and its
//     hub key comes back in a second activation blob (assign.go).
//
// What admits the TPM (its individual enrollment, or a TPM group through
// its EK certificate) is decided before the challenge is issued
// (tpmadmit.go). A challenge for a group is a reference of its own kind
// ("t3.") that names the group by a digest of its id, and its key is
// derived over the group's id: the SAS that answers it authenticates for
// that group only, and the register on that connection must be admitted by
// the same group again.
//
// Nothing is stored per challenge: the reference carries the id of the
// broker run that issued it, its expiry and fresh randomness, and the key is
// derived from the service secret, so no later challenge can cancel an
// earlier one. A reference authenticates once. On a single node the
// references used so far are remembered in memory (usedrefs.go), which is
// why a reference from another run of the broker is refused there: that
// run's memory is gone. In a cluster (the store is a
// store.ChallengeRecorder) the use is recorded in the shared store with one
// compare-and-swap, so any node accepts a reference any node issued, a
// restarted node included, and the run is not checked. The EK
// and SRK a device sends are parsed once for the challenge and the register
// that follows (keycache.go).

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// challenge answers a restricted session's TPM register with a challenge: a
// 401 whose blob carries a key derived for a fresh reference. Unknown ids,
// EK mismatches and EK certificates that admit the TPM nowhere get the same
// 401 as any other refusal.
func (s *Service) challenge(ctx context.Context, id Identity, req RegisterRequest, trackingID string) (Response, error) {
	if req.TPM == nil {
		return Response{}, unauthorized("restricted session sent a register without tpm")
	}
	ek, srk, err := s.tpmKeys.parse(id.RegistrationID, req.TPM)
	if err != nil {
		return Response{}, badRequest(err.Error())
	}
	adm, err := s.admitTPM(ctx, id, ek, req.TPM.EndorsementKeyCertificate, true)
	if err != nil {
		return Response{}, err
	}
	expires := s.cfg.Now().Add(s.cfg.ChallengeLifetime)
	var ref, groupID string
	var key []byte
	if adm.group == nil {
		if ref, err = newChallengeRef(s.cfg.Rand, s.run, expires); err != nil {
			return Response{}, err
		}
		key = challengeKey(s.cfg.ChallengeSecret, id.RegistrationID, ref)
	} else {
		groupID = adm.group.id
		if ref, err = newGroupChallengeRef(s.cfg.Rand, s.run, expires, adm.group.digest); err != nil {
			return Response{}, err
		}
		key = groupChallengeKey(s.cfg.ChallengeSecret, id.RegistrationID, ref, groupID)
	}
	blob, err := attest.NewActivationBlob(s.cfg.Rand, ek, srk, key)
	if err != nil {
		return Response{}, badRequest(fmt.Sprintf("cannot build an activation blob for these keys: %v", err))
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "tpm challenge issued",
		slog.String("trackingId", trackingID), slog.String("registrationId", id.RegistrationID),
		slog.String("groupId", groupID), slog.Time("expires", expires))
	s.observeChallenge(ctx, id.RegistrationID)
	return Response{Status: 401, RetryAfter: -1, Body: &TPMChallenge{
		AuthenticationKey: base64.StdEncoding.EncodeToString(blob),
		KeyName:           ref,
		Message:           challengeMessage,
	}}, nil
}

// authTPM verifies a SAS signed with the key a TPM challenge delivered.
func (s *Service) authTPM(ctx context.Context, tok *attest.SASToken, resource, regID string) (Identity, error) {
	ref := tok.KeyName
	cr, err := parseChallengeRef(ref)
	if err != nil {
		return Identity{}, badConnect(AuthFailureBadChallengeRef, "bad challenge reference: %w", err)
	}
	if s.challenges == nil && cr.run != s.run {
		return Identity{}, notAuthorized("challenge was issued before the broker restarted; the device must ask for a new one")
	}
	now := s.cfg.Now()
	if !now.Before(cr.expires) {
		return Identity{}, badConnect(AuthFailureChallengeExpired, "challenge expired at %s", formatTime(cr.expires))
	}
	if cr.group {
		return s.authTPMGroup(ctx, tok, resource, regID, cr, now)
	}
	key := challengeKey(s.cfg.ChallengeSecret, regID, ref)
	if err := tok.Verify(key, resource, now, s.cfg.SAS); err != nil {
		return Identity{}, notAuthorized("TPM SAS does not verify: %w", err)
	}
	e, err := s.cfg.Store.GetEnrollment(ctx, regID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return Identity{}, notAuthorized("TPM enrollment no longer exists")
	case err != nil:
		return Identity{}, unavailable("read enrollment: %w", err)
	case e.Attestation.Type != store.AttestationTPM:
		return Identity{}, notAuthorized("enrollment is no longer of type tpm")
	}
	if err := s.useChallenge(ctx, cr, now); err != nil {
		if errors.Is(err, errChallengeUsed) {
			return Identity{}, notAuthorized("%w", err)
		}
		return Identity{}, unavailable("mark challenge used: %w", err)
	}
	return Identity{RegistrationID: regID, Method: AuthTPM, ChallengeRef: ref}, nil
}

// authTPMGroup verifies a SAS signed with the key of a group challenge
// reference: the group it names must still exist (and be of type tpm), the
// key is derived over its id, and the id must still have no individual
// enrollment, which would take precedence.
func (s *Service) authTPMGroup(ctx context.Context, tok *attest.SASToken, resource, regID string, cr challengeRef, now time.Time) (Identity, error) {
	g, err := s.tpmGroupOf(ctx, cr.groupDigest)
	if err != nil {
		return Identity{}, unavailable("enrollment groups: %w", err)
	}
	if g == nil {
		return Identity{}, notAuthorized("the TPM group of the challenge no longer exists (or admits no TPM)")
	}
	key := groupChallengeKey(s.cfg.ChallengeSecret, regID, tok.KeyName, g.id)
	if err := tok.Verify(key, resource, now, s.cfg.SAS); err != nil {
		return Identity{}, notAuthorized("TPM SAS does not verify: %w", err)
	}
	_, err = s.cfg.Store.GetEnrollment(ctx, regID)
	switch {
	case err == nil:
		return Identity{}, notAuthorized("an individual enrollment was created since the TPM group challenge; the device must ask again")
	case !errors.Is(err, store.ErrNotFound):
		return Identity{}, unavailable("read enrollment: %w", err)
	}
	if err := s.useChallenge(ctx, cr, now); err != nil {
		if errors.Is(err, errChallengeUsed) {
			return Identity{}, notAuthorized("%w", err)
		}
		return Identity{}, unavailable("mark challenge used: %w", err)
	}
	return Identity{RegistrationID: regID, Method: AuthTPM, GroupID: g.id, ChallengeRef: tok.KeyName}, nil
}

// useChallenge records that cr authenticates now: in the cluster's store
// when there is one (one compare-and-swap, kept until the reference
// expires), else in this run's memory. A second use is errChallengeUsed.
func (s *Service) useChallenge(ctx context.Context, cr challengeRef, now time.Time) error {
	if s.challenges == nil {
		return s.usedRefs.use(cr, now)
	}
	err := s.challenges.UseChallenge(ctx, cr.id(), cr.expires)
	if errors.Is(err, store.ErrChallengeUsed) {
		return errChallengeUsed
	}
	return err
}

// registerTPM handles a register on a TPM-authenticated connection: the body
// repeats tpm, what admits the TPM is decided again (the EK must still match
// the enrollment, or the EK certificate sent again must still be admitted
// by the group the connection authenticated for), and the SRK sent now is
// the one the hub-key blob is built for.
func (s *Service) registerTPM(ctx context.Context, id Identity, req RegisterRequest, trackingID string) (Response, error) {
	if req.TPM == nil {
		return Response{}, badRequest("a TPM register must carry tpm.endorsementKey and tpm.storageRootKey")
	}
	ek, srk, err := s.tpmKeys.parse(id.RegistrationID, req.TPM)
	if err != nil {
		return Response{}, badRequest(err.Error())
	}
	adm, err := s.admitTPM(ctx, id, ek, req.TPM.EndorsementKeyCertificate, false)
	if err != nil {
		return Response{}, err
	}
	switch {
	case id.GroupID == "" && adm.enrollment == nil:
		return Response{}, unauthorized("authenticated through the individual enrollment, which no longer admits the TPM (a TPM group does: the device must ask again)")
	case id.GroupID != "" && adm.group == nil:
		return Response{}, unauthorized("authenticated through TPM group " + id.GroupID + ", and an individual enrollment now takes precedence")
	case id.GroupID != "" && !strings.EqualFold(adm.group.id, id.GroupID):
		return Response{}, unauthorized("authenticated through TPM group " + id.GroupID + ", and now group " + adm.group.id + " admits the TPM")
	}
	return s.assign(ctx, id, adm.source(id.RegistrationID), req, ek, srk, trackingID)
}

// parseTPMKeys decodes and strictly parses the EK and SRK a device sent.
func parseTPMKeys(k *TPMKeys) (ek, srk *attest.Public, err error) {
	ek, err = parsePublicB64(k.EndorsementKey)
	if err != nil {
		return nil, nil, fmt.Errorf("tpm.endorsementKey: %w", err)
	}
	srk, err = parsePublicB64(k.StorageRootKey)
	if err != nil {
		return nil, nil, fmt.Errorf("tpm.storageRootKey: %w", err)
	}
	return ek, srk, nil
}

// parsePublicB64 decodes base64 TPM2B_PUBLIC bytes and parses them strictly.
func parsePublicB64(b64 string) (*attest.Public, error) {
	if b64 == "" {
		return nil, errors.New("missing")
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("not base64: %w", err)
	}
	return attest.ParsePublic(raw)
}

// The challenge reference and the key derived for it.

const (
	// challengeRefPrefix marks a SAS skn as a TPM challenge reference (version 2:
	// version 1 references, without the run id, are no longer issued or accepted).
	challengeRefPrefix = "t2."
	// groupChallengeRefPrefix marks the reference of a challenge issued
	// for a TPM group: version 2's data and the group's digest.
	groupChallengeRefPrefix = "t3."
	// runIDSize is the size of the id of a broker run.
	runIDSize = 8
	// challengeNonceSize is the fresh randomness in a reference.
	challengeNonceSize = 16
	// challengeRefDataSize is run id, expiry (8 bytes, big-endian Unix seconds) and nonce.
	challengeRefDataSize = runIDSize + 8 + challengeNonceSize
	// groupChallengeRefDataSize is a group reference's data: version 2's
	// and the group digest.
	groupChallengeRefDataSize = challengeRefDataSize + groupDigestSize
	// challengeKeyLabel domain-separates challenge keys from any other use of the secret.
	challengeKeyLabel = "dpsd tpm challenge key v1"
	// groupChallengeKeyLabel does the same for the keys of group challenges.
	groupChallengeKeyLabel = "dpsd tpm group challenge key v1"
)

// runID identifies one run of the service (one process lifetime): random,
// drawn when the Service is created.
type runID [runIDSize]byte

// challengeRef is a decoded challenge reference.
type challengeRef struct {
	run     runID
	expires time.Time
	nonce   [challengeNonceSize]byte
	// group marks a group challenge, of the group with groupDigest.
	group       bool
	groupDigest groupDigest
}

// id is the reference's bytes (run id, expiry, nonce): what a cluster's
// store records as used.
func (r challengeRef) id() []byte {
	b := make([]byte, 0, challengeRefDataSize)
	b = append(b, r.run[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(r.expires.Unix()))
	return append(b, r.nonce[:]...)
}

// errNotChallengeRef: the skn is not a TPM challenge reference (a symmetric-key token).
var errNotChallengeRef = errors.New("not a challenge reference")

// isChallengeRef reports whether a SAS skn claims to be a TPM challenge
// reference. A claim that does not parse is refused, never tried as a
// symmetric key. Version 1 references ("t1.") are claims too, so that they
// are refused with a reason instead of being tried as symmetric keys.
func isChallengeRef(skn string) bool {
	return strings.HasPrefix(skn, challengeRefPrefix) || strings.HasPrefix(skn, groupChallengeRefPrefix) ||
		strings.HasPrefix(skn, "t1.")
}

// newChallengeRef returns a fresh reference of run expiring at expires:
// "t2." + base64url-nopad(run id || expiry || 16 random bytes), 46
// characters of [A-Za-z0-9._-].
func newChallengeRef(rand io.Reader, run runID, expires time.Time) (string, error) {
	var b [challengeRefDataSize]byte
	if err := fillChallengeRef(b[:], rand, run, expires); err != nil {
		return "", err
	}
	return challengeRefPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// newGroupChallengeRef returns a fresh reference of a challenge for the TPM
// group of digest g: "t3." + base64url-nopad(run id || expiry || 16 random
// bytes || g), 57 characters of [A-Za-z0-9._-].
func newGroupChallengeRef(rand io.Reader, run runID, expires time.Time, g groupDigest) (string, error) {
	var b [groupChallengeRefDataSize]byte
	if err := fillChallengeRef(b[:challengeRefDataSize], rand, run, expires); err != nil {
		return "", err
	}
	copy(b[challengeRefDataSize:], g[:])
	return groupChallengeRefPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// fillChallengeRef writes run id, expiry and fresh randomness into b.
func fillChallengeRef(b []byte, rand io.Reader, run runID, expires time.Time) error {
	copy(b[:runIDSize], run[:])
	binary.BigEndian.PutUint64(b[runIDSize:runIDSize+8], uint64(expires.Unix()))
	if _, err := io.ReadFull(rand, b[runIDSize+8:challengeRefDataSize]); err != nil {
		return fmt.Errorf("challenge reference randomness: %w", err)
	}
	return nil
}

// parseChallengeRef decodes a reference. It accepts only the exact canonical
// form newChallengeRef writes.
func parseChallengeRef(ref string) (challengeRef, error) {
	if !isChallengeRef(ref) {
		return challengeRef{}, errNotChallengeRef
	}
	var r challengeRef
	size := challengeRefDataSize
	switch {
	case strings.HasPrefix(ref, challengeRefPrefix):
	case strings.HasPrefix(ref, groupChallengeRefPrefix):
		r.group, size = true, groupChallengeRefDataSize
	default:
		return challengeRef{}, errors.New("challenge reference: version 1 references are no longer accepted")
	}
	enc := ref[len(challengeRefPrefix):] // both prefixes have 3 characters
	// The decoder skips CR and LF: check the exact form first so that one
	// challenge has exactly one spelling.
	if len(enc) != base64.RawURLEncoding.EncodedLen(size) {
		return challengeRef{}, fmt.Errorf("challenge reference: %d characters, want %d",
			len(enc), base64.RawURLEncoding.EncodedLen(size))
	}
	for i := 0; i < len(enc); i++ {
		if c := enc[i]; !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return challengeRef{}, fmt.Errorf("challenge reference: byte 0x%02x at offset %d", c, len(challengeRefPrefix)+i)
		}
	}
	var data [groupChallengeRefDataSize]byte
	n, err := base64.RawURLEncoding.Strict().Decode(data[:size], []byte(enc))
	if err != nil {
		return challengeRef{}, fmt.Errorf("challenge reference: %w", err)
	}
	if n != size {
		return challengeRef{}, fmt.Errorf("challenge reference: %d bytes, want %d", n, size)
	}
	secs := binary.BigEndian.Uint64(data[runIDSize : runIDSize+8])
	if secs > math.MaxInt64/2 {
		return challengeRef{}, errors.New("challenge reference: expiry out of range")
	}
	copy(r.run[:], data[:runIDSize])
	r.expires = time.Unix(int64(secs), 0).UTC()
	copy(r.nonce[:], data[runIDSize+8:challengeRefDataSize])
	if r.group {
		copy(r.groupDigest[:], data[challengeRefDataSize:size])
	}
	return r, nil
}

// challengeKey derives the 32-byte HMAC key a challenge delivers:
// HMAC-SHA256(secret, label || 0 || lowercase(registrationID) || 0 || ref).
// Registration ids and references contain no NUL, so the encoding is unambiguous.
func challengeKey(secret []byte, registrationID, ref string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(challengeKeyLabel))
	m.Write([]byte{0})
	m.Write([]byte(strings.ToLower(registrationID)))
	m.Write([]byte{0})
	m.Write([]byte(ref))
	return m.Sum(nil)
}

// groupChallengeKey derives the key of a TPM group challenge:
// HMAC-SHA256(secret, label || 0 || lowercase(registrationID) || 0 || ref ||
// 0 || lowercase(groupID)), with its own label. Group ids contain no NUL
// (store.ErrInvalidID), so the encoding is unambiguous.
func groupChallengeKey(secret []byte, registrationID, ref, groupID string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(groupChallengeKeyLabel))
	m.Write([]byte{0})
	m.Write([]byte(strings.ToLower(registrationID)))
	m.Write([]byte{0})
	m.Write([]byte(ref))
	m.Write([]byte{0})
	m.Write([]byte(strings.ToLower(groupID)))
	return m.Sum(nil)
}
