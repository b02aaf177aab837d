package provision

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// assign allocates a hub (or records disabled/failed), records the
// registration and its operation in one durable step and answers 202. TPM
// devices (srk != nil) get their hub key in an activation blob for srk; the
// key is generated once and reused on every re-registration that attests
// with the same EK (the record's attestation hash, attesthash.go). A
// registration that needs outside I/O (a custom allocation webhook, a hub
// with a hand-off connector) goes to the outbox instead (enqueue,
// handoff.go) and is recorded when that is done.
func (s *Service) assign(ctx context.Context, id Identity, src source, req RegisterRequest, ek, srk *attest.Public, trackingID string) (Response, error) {
	now := s.cfg.Now().UTC()
	prev, err := s.cfg.Store.GetRegistration(ctx, id.RegistrationID)
	var stale *store.Registration // a record of an earlier device with this id
	switch {
	case errors.Is(err, store.ErrNotFound):
		prev = nil
	case err != nil:
		return Response{}, fmt.Errorf("read registration: %w", err)
	case !src.createdAt.IsZero() && src.createdAt.After(prev.CreatedAt):
		// The enrollment was created after this record: the record belongs
		// to an earlier device with the same id. Start afresh: delete it so
		// the new record gets its own creation time, and never hand the
		// earlier device's hub key to this one.
		if err := s.cfg.Store.DeleteRegistration(ctx, id.RegistrationID, prev.ETag); err != nil && !errors.Is(err, store.ErrNotFound) {
			return Response{}, fmt.Errorf("delete stale registration: %w", err)
		}
		stale, prev = prev, nil
	}
	opID, err := newOperationID(s.cfg.Rand)
	if err != nil {
		return Response{}, err
	}
	attHash, err := recordAttestationHash(id, ek)
	if err != nil {
		return Response{}, err
	}
	rec := &store.Registration{
		RegistrationID:    id.RegistrationID,
		AttestationType:   src.attestationType,
		EnrollmentGroupID: src.groupID,
		Payload:           req.Payload,
		AttestationHash:   attHash,
		CreatedAt:         now,
		UpdatedAt:         now,
	}
	if prev != nil {
		if !prev.CreatedAt.IsZero() {
			rec.CreatedAt = prev.CreatedAt
		}
		// The certificates issued for this id stay listed: nothing revokes them.
		rec.Certificate, rec.SupersededCertificates = prev.Certificate, prev.SupersededCertificates
		// The hub key goes only to the attestation it was issued for: a
		// replaced TPM (or a record that cannot say) gets a new one.
		switch {
		case len(prev.AttestationHash) > 0 && bytes.Equal(prev.AttestationHash, attHash):
			rec.HubKey = prev.HubKey
		case len(prev.HubKey) > 0:
			s.log.LogAttrs(ctx, slog.LevelInfo, "attestation differs from the one the hub key was issued for: the key is not handed on",
				slog.String("trackingId", trackingID), slog.String("registrationId", id.RegistrationID),
				slog.Bool("recordHasHash", len(prev.AttestationHash) > 0))
		}
	}
	if stale != nil {
		rec.SupersededCertificates = supersede(stale.Certificate, stale.SupersededCertificates, now)
	}
	if src.disabled {
		rec.Status = store.RegistrationDisabled
	} else {
		snap, err := s.linkedHubs(ctx)
		if err != nil {
			return Response{}, err
		}
		a := s.allocate(src.target, id.RegistrationID, prev, snap)
		if a.custom && s.cfg.Custom == nil {
			a.errorCode, a.errorMessage = ErrorCodeCustomAllocationFailed, "Custom allocation is not configured on this provisioning service"
		}
		if a.errorCode == 0 && s.needsOutbox(&a, snap) {
			return s.enqueue(ctx, id, &src, req, ek, srk, rec, &a, opID, now, trackingID)
		}
		if a.errorCode != 0 {
			rec.Status, rec.ErrorCode, rec.ErrorMessage = store.RegistrationFailed, a.errorCode, a.errorMessage
		} else {
			rec.Status, rec.AssignedHub, rec.Substatus, rec.DeviceID = store.RegistrationAssigned, a.hub, a.substatus, src.deviceID
		}
	}
	var chain [][]byte
	if csr := req.csr; csr != nil && rec.Status == store.RegistrationAssigned {
		switch {
		case s.cfg.Issuer == nil:
			return s.csrNotConfigured(ctx, id, csr, "the service issues no certificates (no issuer)", now, trackingID)
		case src.issuance.credentialPolicy == "":
			return s.csrNotConfigured(ctx, id, csr, "the enrollment or group names no credentialPolicyName", now, trackingID)
		}
		certs, err := s.issueCertificate(ctx, id, csr, src.issuance, now)
		if err != nil {
			return Response{}, err
		}
		rec.SupersededCertificates = supersede(rec.Certificate, rec.SupersededCertificates, now)
		rec.Certificate = store.NewX509CertificateInfo(certs[0])
		for _, c := range certs {
			chain = append(chain, c.Raw)
		}
	}
	op := &store.Operation{
		ID:             opID,
		RegistrationID: id.RegistrationID,
		Status:         rec.Status,
		ErrorCode:      rec.ErrorCode,
		ErrorMessage:   rec.ErrorMessage,
		CreatedAt:      now,
		ExpiresAt:      now.Add(s.cfg.OperationLifetime),
	}
	if chain != nil {
		op.IssuedCertificateChain, op.CSRField = chain, req.csr.field
	}
	if rec.Status == store.RegistrationAssigned && srk != nil {
		if len(rec.HubKey) != HubKeySize {
			rec.HubKey = make([]byte, HubKeySize)
			if _, err := io.ReadFull(s.cfg.Rand, rec.HubKey); err != nil {
				return Response{}, fmt.Errorf("hub key randomness: %w", err)
			}
		}
		blob, err := attest.NewActivationBlob(s.cfg.Rand, ek, srk, rec.HubKey)
		if err != nil {
			return Response{}, badRequest(fmt.Sprintf("cannot build an activation blob for these keys: %v", err))
		}
		op.AuthenticationKey = blob
	}
	if _, err := s.cfg.Store.RecordRegistration(ctx, rec, op); err != nil {
		return Response{}, fmt.Errorf("record registration: %w", err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "registration recorded",
		slog.String("trackingId", trackingID), slog.String("registrationId", id.RegistrationID),
		slog.String("method", id.Method.String()), slog.String("groupId", src.groupID),
		slog.String("status", rec.Status), slog.String("assignedHub", rec.AssignedHub),
		slog.String("substatus", rec.Substatus), slog.Int("errorCode", rec.ErrorCode))
	ev := RegistrationEvent{
		RegistrationID: id.RegistrationID, AttestationType: src.attestationType, Method: id.Method.String(),
		GroupID: src.groupID, Status: rec.Status, AssignedHub: rec.AssignedHub, DeviceID: rec.DeviceID,
		ErrorCode: rec.ErrorCode, TrackingID: trackingID,
	}
	if chain != nil {
		ev.CertificateSerial, ev.CertificateThumbprint = rec.Certificate.SerialNumber, rec.Certificate.SHA256Thumbprint
	}
	s.recorded(ctx, ev)
	return Response{Status: 202, RetryAfter: s.retryAfter, Body: &OperationStatus{
		OperationID: opID,
		Status:      store.RegistrationAssigning,
	}}, nil
}
