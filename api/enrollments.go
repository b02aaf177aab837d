package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/tpmdps/dpsd/internal/jsonlimit"
	"github.com/tpmdps/dpsd/store"
)

// enrollmentIn is the request form of an enrollment. The server-managed fields
// a client may send back after a GET (times, registrationState) shadow those
// of store.Enrollment and are ignored.
type enrollmentIn struct {
	store.Enrollment
	CreatedAt         json.RawMessage `json:"createdDateTimeUtc"`
	UpdatedAt         json.RawMessage `json:"lastUpdatedDateTimeUtc"`
	RegistrationState json.RawMessage `json:"registrationState"`
}

// enrollmentOut is the response form of a single enrollment: the record and,
// as DPS does, the device's registration state when there is one.
type enrollmentOut struct {
	*store.Enrollment
	RegistrationState *store.Registration `json:"registrationState,omitempty"`
}

// DecodeEnrollment decodes an individual enrollment request body (untrusted
// bytes): size of nesting is bounded and server-managed fields are dropped.
// It does not validate; see ValidateEnrollment.
func DecodeEnrollment(data []byte) (*store.Enrollment, error) {
	if err := jsonlimit.CheckDepth(data, MaxJSONDepth); err != nil {
		return nil, &apiError{code: codeMalformedJSON, msg: err.Error()}
	}
	var in enrollmentIn
	if err := json.Unmarshal(data, &in); err != nil {
		return nil, jsonError("enrollment", err)
	}
	e := in.Enrollment
	return &e, nil
}

// ValidateEnrollment checks e, normalises it (lowercased registrationId,
// default status, certificate info) and generates missing symmetric keys,
// keeping those of prev (the stored record being replaced, or nil). pathID,
// when not empty, is the id in the URL, which the body must agree with. rnd
// is the key source (nil means crypto/rand).
func ValidateEnrollment(e *store.Enrollment, pathID string, prev *store.Enrollment, rnd io.Reader) error {
	if err := normalizeID(&e.RegistrationID, pathID, "registrationId"); err != nil {
		return err
	}
	if err := validateDeviceID(e.DeviceID); err != nil {
		return invalid("%v", err)
	}
	a := &e.Attestation
	switch a.Type {
	case store.AttestationTPM:
		if a.SymmetricKey != nil || a.X509 != nil {
			return invalid("attestation type tpm carries only attestation.tpm")
		}
		if err := validateTPM(a.TPM); err != nil {
			return err
		}
		if err := validateIndividualTPM(a.TPM); err != nil {
			return err
		}
	case store.AttestationSymmetricKey:
		var prevSettings *store.EnrollmentSettings
		if prev != nil {
			prevSettings = &prev.EnrollmentSettings
		}
		if err := validateSymmetricAttestation(a, prevSettings, rnd); err != nil {
			return err
		}
	case store.AttestationX509:
		if a.TPM != nil || a.SymmetricKey != nil {
			return invalid("attestation type x509 carries only attestation.x509")
		}
		if a.X509 == nil || a.X509.SigningCertificates != nil || a.X509.CAReferences != nil {
			return invalid("an individual x509 enrollment needs attestation.x509.clientCertificates (and nothing else)")
		}
		if err := validateCertificates("attestation.x509.clientCertificates", a.X509.ClientCertificates); err != nil {
			return err
		}
	case "":
		return invalid("attestation.type is required (tpm, symmetricKey or x509)")
	default:
		return invalid("attestation.type must be tpm, symmetricKey or x509")
	}
	var prevSettings *store.EnrollmentSettings
	if prev != nil {
		prevSettings = &prev.EnrollmentSettings
	}
	return validateCommon(&e.EnrollmentSettings, prevSettings)
}

// checkPathID validates an id taken from the URL.
func checkPathID(id string) error {
	if err := ValidateID(id); err != nil {
		return &apiError{code: codeInvalidArgument, msg: "id in path: " + plain(err), err: err}
	}
	return nil
}

func (h *handler) getEnrollment(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	if err := checkPathID(id); err != nil {
		h.writeError(w, rq, err)
		return
	}
	e, err := h.store.GetEnrollment(r.Context(), id)
	if err != nil {
		h.writeError(w, rq, storeError(err, codeEnrollmentNotFound, "enrollment"))
		return
	}
	out := enrollmentOut{Enrollment: enrollmentWithoutKeys(e)}
	if reg, err := h.store.GetRegistration(r.Context(), id); err == nil {
		out.RegistrationState = reg
	} else if !errors.Is(err, store.ErrNotFound) {
		h.writeError(w, rq, storeError(err, codeRegistrationMissing, "registration"))
		return
	}
	setETag(w, e.ETag)
	h.writeJSON(w, http.StatusOK, out)
}

func (h *handler) putEnrollment(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	h.enrollments.servePut(h, w, r, rq, id)
}

// changeAction names a write in the audit log.
func changeAction(existed bool) string {
	if existed {
		return "update"
	}
	return "create"
}

func (h *handler) deleteEnrollment(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	h.enrollments.serveDelete(h, w, r, rq, id)
}

func (h *handler) queryEnrollments(w http.ResponseWriter, r *http.Request, rq *request) {
	h.enrollments.serveQuery(h, w, r, rq)
}

// asAPIError keeps an apiError or wraps any other error as a 400.
func asAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	return &apiError{code: codeInvalidArgument, msg: plain(err), err: err}
}

// listError maps a listing failure (a bad continuation token is a 400).
func listError(err error) *apiError {
	return storeError(err, codeNoRoute, "listing")
}

// normalizeID fills an empty record id from pathID (the id in the URL, ""
// when there is none), checks that the two agree (ignoring case) and that
// the id is valid, and lowercases it. field names the id in errors.
func normalizeID(id *string, pathID, field string) error {
	if *id == "" {
		*id = pathID
	}
	if pathID != "" && !strings.EqualFold(*id, pathID) {
		return invalid("%s in the body differs from the one in the path", field)
	}
	if err := ValidateID(*id); err != nil {
		return &apiError{code: codeInvalidArgument, msg: field + ": " + plain(err), err: err}
	}
	*id = strings.ToLower(*id)
	return nil
}
