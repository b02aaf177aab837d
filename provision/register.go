package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

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
		target: allocationTarget{
			policy: e.AllocationPolicy, hubHostName: e.IoTHubHostName,
			hubs: e.IoTHubs, reprovision: e.ReprovisionPolicy,
		},
	}
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
		target: allocationTarget{
			policy: g.AllocationPolicy, hubHostName: g.IoTHubHostName,
			hubs: g.IoTHubs, reprovision: g.ReprovisionPolicy,
		},
	}, Response{}, true
}
