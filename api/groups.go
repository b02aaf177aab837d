package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/tpmdps/dpsd/store"
)

// groupIn is the request form of an enrollment group; server-managed times are ignored.
type groupIn struct {
	store.Group
	CreatedAt json.RawMessage `json:"createdDateTimeUtc"`
	UpdatedAt json.RawMessage `json:"lastUpdatedDateTimeUtc"`
}

// DecodeGroup decodes an enrollment group request body (untrusted bytes).
// It does not validate; see ValidateGroup.
func DecodeGroup(data []byte) (*store.Group, error) {
	if err := checkJSONDepth(data, MaxJSONDepth); err != nil {
		return nil, &apiError{code: codeMalformedJSON, msg: err.Error()}
	}
	var in groupIn
	if err := json.Unmarshal(data, &in); err != nil {
		return nil, &apiError{code: codeMalformedJSON, msg: "malformed enrollment group JSON: " + err.Error(), err: err}
	}
	g := in.Group
	return &g, nil
}

// ValidateGroup checks and normalises g like ValidateEnrollment. Groups attest
// with a symmetric group key (devices use keys derived from it) or an X.509
// signing CA; TPM groups are not supported (DPS retired them).
func ValidateGroup(g *store.Group, pathID string, prev *store.Group, rnd io.Reader) error {
	if g.EnrollmentGroupID == "" {
		g.EnrollmentGroupID = pathID
	}
	if pathID != "" && !strings.EqualFold(g.EnrollmentGroupID, pathID) {
		return invalid("enrollmentGroupId in the body differs from the one in the path")
	}
	if err := ValidateID(g.EnrollmentGroupID); err != nil {
		return invalid("enrollmentGroupId: %v", err)
	}
	g.EnrollmentGroupID = strings.ToLower(g.EnrollmentGroupID)
	a := &g.Attestation
	switch a.Type {
	case store.AttestationSymmetricKey:
		if a.TPM != nil || a.X509 != nil {
			return invalid("attestation type symmetricKey carries only attestation.symmetricKey")
		}
		var prevKeys *store.SymmetricKeyAttestation
		if prev != nil && prev.Attestation.Type == store.AttestationSymmetricKey {
			prevKeys = prev.Attestation.SymmetricKey
		}
		if err := validateSymmetricKey(&a.SymmetricKey, prevKeys, rnd); err != nil {
			return err
		}
	case store.AttestationX509:
		if a.TPM != nil || a.SymmetricKey != nil {
			return invalid("attestation type x509 carries only attestation.x509")
		}
		if a.X509 == nil || a.X509.ClientCertificates != nil {
			return invalid("an x509 enrollment group needs attestation.x509.signingCertificates or caReferences")
		}
		switch {
		case a.X509.SigningCertificates != nil && a.X509.CAReferences != nil:
			return invalid("give either attestation.x509.signingCertificates or caReferences, not both")
		case a.X509.CAReferences != nil:
			if a.X509.CAReferences.Primary == "" {
				return invalid("attestation.x509.caReferences.primary is required")
			}
		default:
			if err := validateCertificates("attestation.x509.signingCertificates", a.X509.SigningCertificates); err != nil {
				return err
			}
		}
	case store.AttestationTPM:
		return invalid("enrollment groups do not support tpm attestation: enroll TPM devices individually")
	case "":
		return invalid("attestation.type is required (symmetricKey or x509)")
	default:
		return invalid("attestation.type must be symmetricKey or x509")
	}
	return validateCommon(&g.ProvisioningStatus, g.IoTHubHostName, g.IoTHubs, g.AllocationPolicy,
		&g.InitialTwin, g.CustomAllocationDefinition)
}

func (h *handler) getGroup(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	if err := checkPathID(id); err != nil {
		h.writeError(w, rq, err)
		return
	}
	g, err := h.store.GetGroup(r.Context(), id)
	if err != nil {
		h.writeError(w, rq, storeError(err, codeGroupNotFound, "enrollment group"))
		return
	}
	setETag(w, g.ETag)
	h.writeJSON(w, http.StatusOK, g)
}

func (h *handler) putGroup(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	if err := checkPathID(id); err != nil {
		h.writeError(w, rq, err)
		return
	}
	body, err := readBody(w, r, h.cfg.MaxBodyBytes)
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	g, err := DecodeGroup(body)
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	stored, aerr := h.writeGroup(r, rq, g, id, ifMatch(r), false)
	if aerr != nil {
		h.writeError(w, rq, aerr)
		return
	}
	setETag(w, stored.ETag)
	h.writeJSON(w, http.StatusOK, stored)
}

// writeGroup validates g against the stored record and writes it.
func (h *handler) writeGroup(r *http.Request, rq *request, g *store.Group, pathID, etag string, mustCreate bool) (*store.Group, *apiError) {
	lookup := pathID
	if lookup == "" {
		lookup = g.EnrollmentGroupID
	}
	var prev *store.Group
	if ValidateID(lookup) == nil {
		p, err := h.store.GetGroup(r.Context(), lookup)
		switch {
		case err == nil:
			prev = p
		case !errors.Is(err, store.ErrNotFound):
			return nil, storeError(err, codeGroupNotFound, "enrollment group")
		}
	}
	if mustCreate && prev != nil {
		return nil, errorf(codeConflict, "enrollment group %s already exists", prev.EnrollmentGroupID)
	}
	if err := ValidateGroup(g, pathID, prev, nil); err != nil {
		return nil, asAPIError(err)
	}
	g.ETag = ""
	stored, err := h.store.PutGroup(r.Context(), g, etag)
	if err != nil {
		return nil, storeError(err, codeGroupNotFound, "enrollment group")
	}
	action := "update"
	if prev == nil {
		action = "create"
	}
	h.audit(rq, action, "enrollmentGroup", stored.EnrollmentGroupID, stored.ETag)
	return stored, nil
}

func (h *handler) deleteGroup(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	if err := checkPathID(id); err != nil {
		h.writeError(w, rq, err)
		return
	}
	if err := h.store.DeleteGroup(r.Context(), id, ifMatch(r)); err != nil {
		h.writeError(w, rq, storeError(err, codeGroupNotFound, "enrollment group"))
		return
	}
	h.audit(rq, "delete", "enrollmentGroup", strings.ToLower(id), "")
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) queryGroups(w http.ResponseWriter, r *http.Request, rq *request) {
	body, err := readBody(w, r, h.cfg.MaxBodyBytes)
	if err == nil {
		err = checkQuerySpec(body)
	}
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	q, err := pageQuery(r)
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	p, err := h.store.ListGroups(r.Context(), q)
	if err != nil {
		h.writeError(w, rq, listError(err))
		return
	}
	writePage(h, w, "EnrollmentGroup", p)
}
