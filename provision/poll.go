package provision

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/tpmdps/dpsd/internal/trackid"
	"github.com/tpmdps/dpsd/store"
)

// Poll answers an operation status request (docs/protocol.md section 4). Unknown
// operations and other devices' operations get the same 404, so a device
// learns nothing about others. A restricted session may not poll (401).
func (s *Service) Poll(ctx context.Context, id Identity, operationID, trackingID string) Response {
	if trackingID == "" {
		trackingID = trackid.New()
	}
	resp, err := s.poll(ctx, id, operationID)
	if err != nil {
		return s.refused(ctx, trackingID, id, err)
	}
	return resp
}

// poll reads the operation and, once it is final, the registration.
func (s *Service) poll(ctx context.Context, id Identity, operationID string) (Response, error) {
	if id.Method == AuthRestricted {
		return Response{}, unauthorized("restricted session may not poll")
	}
	if !isOperationID(operationID) {
		return Response{}, notFound("malformed operation id")
	}
	op, err := s.cfg.Store.GetOperation(ctx, operationID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return Response{}, notFound("no such operation")
	case err != nil:
		return Response{}, fmt.Errorf("read operation: %w", err)
	case !strings.EqualFold(op.RegistrationID, id.RegistrationID):
		return Response{}, notFound("operation of another registration")
	}
	if op.Status == store.RegistrationAssigning || op.Status == "" {
		// Still in the outbox (handoff.go): a webhook or a hub is being asked.
		return Response{Status: 202, RetryAfter: s.cfg.Handoff.RetryAfter, Body: &OperationStatus{
			OperationID: op.ID,
			Status:      store.RegistrationAssigning,
			RegistrationState: &RegistrationState{
				RegistrationID: id.RegistrationID,
				Status:         store.RegistrationAssigning,
			},
		}}, nil
	}
	rec, err := s.cfg.Store.GetRegistration(ctx, id.RegistrationID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		rec = nil // deleted since: answer from the operation alone
	case err != nil:
		return Response{}, fmt.Errorf("read registration: %w", err)
	}
	st := registrationState(id.RegistrationID, op, rec)
	if id.Method == AuthX509 && id.Certificate != nil {
		st.X509 = x509Result(id)
	}
	return Response{Status: 200, RetryAfter: -1, Body: &OperationStatus{
		OperationID:       op.ID,
		Status:            op.Status,
		RegistrationState: st,
	}}, nil
}

// registrationState builds the final registrationState from the operation
// (its status, error and blob are the ones this operation reported) and the
// registration record (hub, device id, times, etag, payload) when it exists.
// The payload answered is the record's: a custom allocation webhook's
// payload when it returned one, else the device's own, as recorded.
func registrationState(regID string, op *store.Operation, rec *store.Registration) *RegistrationState {
	st := &RegistrationState{
		RegistrationID: regID,
		Status:         op.Status,
		ErrorCode:      op.ErrorCode,
		ErrorMessage:   op.ErrorMessage,
	}
	if rec != nil {
		st.CreatedDateTimeUTC = formatTime(rec.CreatedAt)
		st.LastUpdatedDateTimeUTC = formatTime(rec.UpdatedAt)
		st.ETag = rec.ETag
		st.Payload = rec.Payload
		if rec.Status == op.Status && op.Status == store.RegistrationAssigned {
			st.AssignedHub = rec.AssignedHub
			st.DeviceID = rec.DeviceID
			st.Substatus = rec.Substatus
		}
		if rec.EnrollmentGroupID != "" && rec.AttestationType == store.AttestationSymmetricKey {
			st.SymmetricKey = &SymmetricKeyRegistration{EnrollmentGroupID: rec.EnrollmentGroupID}
		}
	} else {
		st.CreatedDateTimeUTC = formatTime(op.CreatedAt)
		st.LastUpdatedDateTimeUTC = formatTime(op.CreatedAt)
	}
	if len(op.AuthenticationKey) > 0 {
		st.TPM = &TPMRegistrationResult{AuthenticationKey: base64.StdEncoding.EncodeToString(op.AuthenticationKey)}
	}
	if rec != nil && rec.EnrollmentGroupID != "" && rec.AttestationType == store.AttestationTPM {
		if st.TPM == nil {
			st.TPM = &TPMRegistrationResult{}
		}
		st.TPM.EnrollmentGroupID = rec.EnrollmentGroupID
	}
	if op.Status == store.RegistrationAssigned {
		issuedChainState(st, op)
	}
	return st
}
