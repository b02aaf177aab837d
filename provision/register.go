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
	// enrollment or group is the record re-read at register time (one of
	// them): a custom allocation echoes it, a hand-off takes the device's
	// keys, initial twin and capabilities from it.
	enrollment *store.Enrollment
	group      *store.Group
	issuance   issuancePolicy
}

// settings returns the enrollment's or the group's settings.
func (src *source) settings() *store.EnrollmentSettings {
	if src.enrollment != nil {
		return &src.enrollment.EnrollmentSettings
	}
	if src.group != nil {
		return &src.group.EnrollmentSettings
	}
	return &store.EnrollmentSettings{}
}

// Register handles a register request from an identified connection
// (docs/protocol.md sections 4 and 5). On a restricted connection it runs the TPM
// challenge (answer 401 with an activation blob); on an authenticated one it
// allocates a hub, records the registration and its operation durably and
// answers 202 with the operation id to poll. A refusal is answered in the
// DPS error shape and logged once (refusal.go).
func (s *Service) Register(ctx context.Context, id Identity, req RegisterRequest, trackingID string) Response {
	if trackingID == "" {
		trackingID = trackid.New()
	}
	resp, err := s.register(ctx, id, req, trackingID)
	if err != nil {
		return s.refused(ctx, trackingID, id, err)
	}
	return resp
}

// register checks the body and hands the request to the connection's
// attestation method.
func (s *Service) register(ctx context.Context, id Identity, req RegisterRequest, trackingID string) (Response, error) {
	if req.RegistrationID != "" && !strings.EqualFold(req.RegistrationID, id.RegistrationID) {
		return Response{}, badRequest("the body's registrationId does not match the connection's")
	}
	if isJSONNull(req.Payload) {
		req.Payload = nil
	}
	if len(req.Payload) > MaxPayloadSize {
		return Response{}, badRequest(fmt.Sprintf("payload exceeds %d bytes", MaxPayloadSize))
	}
	if len(req.Payload) > 0 && !json.Valid(req.Payload) {
		return Response{}, badRequest("payload is not valid JSON")
	}
	if id.Method == AuthRestricted {
		// A restricted session only asks for a TPM challenge: its CSR, if
		// any, is not even parsed (that would cost work for an outsider).
		return s.challenge(ctx, id, req, trackingID)
	}
	csr, err := parseDeviceCSR(req, id.RegistrationID)
	if err != nil {
		return Response{}, err
	}
	req.csr = csr
	var src source
	switch id.Method {
	case AuthTPM:
		return s.registerTPM(ctx, id, req, trackingID)
	case AuthSymmetricKey:
		src, err = s.symmetricSource(ctx, id)
	case AuthX509:
		src, err = s.x509Source(ctx, id)
	default:
		return Response{}, unauthorized("unsupported attestation method " + id.Method.String())
	}
	if err != nil {
		return Response{}, err
	}
	return s.assign(ctx, id, src, req, nil, nil, trackingID)
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
		enrollment:      e,
		issuance:        issuanceOf(&e.EnrollmentSettings),
	}
}

// allocationTargetOf is where an enrollment's or a group's settings send
// its devices.
func allocationTargetOf(s *store.EnrollmentSettings) allocationTarget {
	return allocationTarget{
		policy: s.AllocationPolicy, hubHostName: s.IoTHubHostName,
		hubs: s.IoTHubs, reprovision: s.ReprovisionPolicy, custom: s.CustomAllocationDefinition,
	}
}

// credentialSource re-reads, at register time, the enrollment or group a
// connection authenticated against and checks that it still accepts the
// credential (enrollmentOK, groupOK): the individual enrollment when the
// connection matched one, else the group, unless an individual enrollment
// has appeared since. groupChanged is the refusal reason when the group no
// longer accepts it.
func (s *Service) credentialSource(ctx context.Context, id Identity, attestationType string,
	enrollmentOK func(*store.Enrollment) bool, groupOK func(*store.Group) bool, groupChanged string) (source, error) {
	e, err := s.cfg.Store.GetEnrollment(ctx, id.RegistrationID)
	switch {
	case err == nil:
		if id.GroupID != "" || !enrollmentOK(e) {
			return source{}, unauthorized("individual enrollment changed since authentication")
		}
		return enrollmentSource(e), nil
	case !errors.Is(err, store.ErrNotFound):
		return source{}, fmt.Errorf("read enrollment: %w", err)
	case id.GroupID == "":
		return source{}, unauthorized("enrollment deleted since authentication")
	}
	g, err := s.cfg.Store.GetGroup(ctx, id.GroupID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return source{}, unauthorized("enrollment group deleted since authentication")
	case err != nil:
		return source{}, fmt.Errorf("read enrollment group: %w", err)
	case !groupOK(g):
		return source{}, unauthorized(groupChanged)
	}
	return groupSource(g, attestationType, id.RegistrationID), nil
}

// groupSource describes enrollment group g for a device of attestationType
// registering as regID (its device id: a group names none).
func groupSource(g *store.Group, attestationType, regID string) source {
	return source{
		attestationType: attestationType,
		groupID:         g.EnrollmentGroupID,
		deviceID:        regID,
		disabled:        strings.EqualFold(g.ProvisioningStatus, store.StatusDisabled),
		createdAt:       g.CreatedAt,
		target:          allocationTargetOf(&g.EnrollmentSettings),
		group:           g,
		issuance:        issuanceOf(&g.EnrollmentSettings),
	}
}
