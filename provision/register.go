package provision

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/internal/trackid"
	"github.com/tpmdps/dpsd/store"
)

// HubKeySize is the size of a TPM device's long-term hub key.
const HubKeySize = 32

// MaxPayloadSize bounds the device payload kept in a registration record.
const MaxPayloadSize = MaxRequestSize

// source is what the device's enrollment or group says about its registration.
type source struct {
	attestationType string
	groupID         string
	deviceID        string
	disabled        bool
	createdAt       time.Time
	target          allocationTarget
}

// Register handles a register request from an identified connection
// (docs/protocol.md sections 4 and 5). On a restricted connection it runs the TPM
// challenge (answer 401 with an activation blob); on an authenticated one it
// allocates a hub, records the registration and its operation durably and
// answers 202 with the operation id to poll.
func (s *Service) Register(ctx context.Context, id Identity, req RegisterRequest, trackingID string) Response {
	if trackingID == "" {
		trackingID = trackid.New()
	}
	if req.RegistrationID != "" && !strings.EqualFold(req.RegistrationID, id.RegistrationID) {
		return s.badRequest(ctx, trackingID, id, "the body's registrationId does not match the connection's")
	}
	if isJSONNull(req.Payload) {
		req.Payload = nil
	}
	if len(req.Payload) > MaxPayloadSize {
		return s.badRequest(ctx, trackingID, id, fmt.Sprintf("payload exceeds %d bytes", MaxPayloadSize))
	}
	if len(req.Payload) > 0 && !json.Valid(req.Payload) {
		return s.badRequest(ctx, trackingID, id, "payload is not valid JSON")
	}
	switch id.Method {
	case AuthRestricted:
		return s.challenge(ctx, id, req, trackingID)
	case AuthTPM:
		return s.registerTPM(ctx, id, req, trackingID)
	case AuthSymmetricKey:
		src, resp, ok := s.symmetricSource(ctx, id, trackingID)
		if !ok {
			return resp
		}
		return s.assign(ctx, id, src, req, nil, nil, trackingID)
	case AuthX509:
		src, resp, ok := s.x509Source(ctx, id, trackingID)
		if !ok {
			return resp
		}
		return s.assign(ctx, id, src, req, nil, nil, trackingID)
	default:
		return s.unauthorized(ctx, trackingID, id, "unsupported attestation method "+id.Method.String())
	}
}

// registerTPM handles a register on a TPM-authenticated connection: the body
// repeats tpm, the EK must still match the enrollment, and the SRK sent now
// is the one the hub-key blob is built for.
func (s *Service) registerTPM(ctx context.Context, id Identity, req RegisterRequest, trackingID string) Response {
	if req.TPM == nil {
		return s.badRequest(ctx, trackingID, id, "a TPM register must carry tpm.endorsementKey and tpm.storageRootKey")
	}
	ek, srk, err := s.tpmKeys.parse(id.RegistrationID, req.TPM)
	if err != nil {
		return s.badRequest(ctx, trackingID, id, err.Error())
	}
	e, resp, ok := s.tpmEnrollment(ctx, id, ek, trackingID)
	if !ok {
		return resp
	}
	src := enrollmentSource(e)
	return s.assign(ctx, id, src, req, ek, srk, trackingID)
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

// tpmEnrollment returns the device's TPM enrollment when its EK equals ek.
// Otherwise it returns the answer: the one 401 for unknown ids, other
// attestation types and EK mismatches alike, or a 500 if the store failed.
func (s *Service) tpmEnrollment(ctx context.Context, id Identity, ek *attest.Public, trackingID string) (*store.Enrollment, Response, bool) {
	e, err := s.cfg.Store.GetEnrollment(ctx, id.RegistrationID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, s.unauthorized(ctx, trackingID, id, "no enrollment"), false
	case err != nil:
		return nil, s.internal(ctx, trackingID, id, fmt.Errorf("read enrollment: %w", err)), false
	case e.Attestation.Type != store.AttestationTPM || e.Attestation.TPM == nil:
		return nil, s.unauthorized(ctx, trackingID, id, "enrollment is not of type tpm"), false
	}
	// Identical bytes are the same key; only a different encoding of the
	// enrolled EK needs parsing to compare the public keys themselves.
	if raw, err := base64.StdEncoding.DecodeString(e.Attestation.TPM.EndorsementKey); err == nil && bytes.Equal(raw, ek.Bytes()) {
		return e, Response{}, true
	}
	enrolled, err := parsePublicB64(e.Attestation.TPM.EndorsementKey)
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelWarn, "enrolled endorsement key does not parse",
			slog.String("registrationId", id.RegistrationID), slog.String("error", err.Error()))
		return nil, s.unauthorized(ctx, trackingID, id, "enrolled EK unusable"), false
	}
	if !enrolled.Equal(ek) {
		return nil, s.unauthorized(ctx, trackingID, id, "endorsement key does not match the enrollment"), false
	}
	return e, Response{}, true
}

// enrollmentSource describes an individual enrollment.
func enrollmentSource(e *store.Enrollment) source {
	deviceID := e.DeviceID
	if deviceID == "" {
		deviceID = strings.ToLower(e.RegistrationID)
	}
	return source{
		attestationType: e.Attestation.Type,
		deviceID:        deviceID,
		disabled:        strings.EqualFold(e.ProvisioningStatus, store.StatusDisabled),
		createdAt:       e.CreatedAt,
		target:          allocationTargetOf(&e.EnrollmentSettings),
	}
}

// allocationTargetOf is where an enrollment's or a group's settings send
// its devices.
func allocationTargetOf(s *store.EnrollmentSettings) allocationTarget {
	return allocationTarget{
		policy: s.AllocationPolicy, hubHostName: s.IoTHubHostName,
		hubs: s.IoTHubs, reprovision: s.ReprovisionPolicy,
	}
}

// symmetricSource re-reads what a symmetric-key connection authenticated
// against: the individual enrollment, or the group when one matched and no
// individual enrollment has appeared since.
func (s *Service) symmetricSource(ctx context.Context, id Identity, trackingID string) (source, Response, bool) {
	return s.credentialSource(ctx, id, trackingID, store.AttestationSymmetricKey,
		func(e *store.Enrollment) bool { return e.Attestation.Type == store.AttestationSymmetricKey },
		func(g *store.Group) bool { return g.Attestation.Type == store.AttestationSymmetricKey },
		"enrollment group is no longer symmetricKey")
}

// credentialSource re-reads, at register time, the enrollment or group a
// connection authenticated against and checks that it still accepts the
// credential (enrollmentOK, groupOK): the individual enrollment when the
// connection matched one, else the group, unless an individual enrollment
// has appeared since. groupChanged is the refusal reason when the group no
// longer accepts it.
func (s *Service) credentialSource(ctx context.Context, id Identity, trackingID, attestationType string,
	enrollmentOK func(*store.Enrollment) bool, groupOK func(*store.Group) bool, groupChanged string) (source, Response, bool) {
	e, err := s.cfg.Store.GetEnrollment(ctx, id.RegistrationID)
	switch {
	case err == nil:
		if id.GroupID != "" || !enrollmentOK(e) {
			return source{}, s.unauthorized(ctx, trackingID, id, "individual enrollment changed since authentication"), false
		}
		return enrollmentSource(e), Response{}, true
	case !errors.Is(err, store.ErrNotFound):
		return source{}, s.internal(ctx, trackingID, id, fmt.Errorf("read enrollment: %w", err)), false
	case id.GroupID == "":
		return source{}, s.unauthorized(ctx, trackingID, id, "enrollment deleted since authentication"), false
	}
	g, err := s.cfg.Store.GetGroup(ctx, id.GroupID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return source{}, s.unauthorized(ctx, trackingID, id, "enrollment group deleted since authentication"), false
	case err != nil:
		return source{}, s.internal(ctx, trackingID, id, fmt.Errorf("read enrollment group: %w", err)), false
	case !groupOK(g):
		return source{}, s.unauthorized(ctx, trackingID, id, groupChanged), false
	}
	return source{
		attestationType: attestationType,
		groupID:         g.EnrollmentGroupID,
		deviceID:        id.RegistrationID,
		disabled:        strings.EqualFold(g.ProvisioningStatus, store.StatusDisabled),
		createdAt:       g.CreatedAt,
		target:          allocationTargetOf(&g.EnrollmentSettings),
	}, Response{}, true
}
