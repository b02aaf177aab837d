package api

import (
	"encoding/json"
	"io"
	"net/http"

	"github.com/tpmdps/dpsd/internal/jsonlimit"
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
	if err := jsonlimit.CheckDepth(data, MaxJSONDepth); err != nil {
		return nil, &apiError{code: codeMalformedJSON, msg: err.Error()}
	}
	var in groupIn
	if err := json.Unmarshal(data, &in); err != nil {
		return nil, jsonError("enrollment group", err)
	}
	g := in.Group
	return &g, nil
}

// ValidateGroup checks and normalises g like ValidateEnrollment. Groups attest
// with a symmetric group key (devices use keys derived from it) or an X.509
// signing CA; TPM groups are not supported (DPS retired them).
func ValidateGroup(g *store.Group, pathID string, prev *store.Group, rnd io.Reader) error {
	if err := normalizeID(&g.EnrollmentGroupID, pathID, "enrollmentGroupId"); err != nil {
		return err
	}
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
	getRecord(h, w, r, rq, id, h.store.GetGroup, groupWithoutKeys, groupETag, codeGroupNotFound, "enrollment group")
}

func (h *handler) putGroup(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	putRecord(h, w, r, rq, id, DecodeGroup, h.writeGroup, groupWithoutKeys, groupETag)
}

// groupETag is the etag of g.
func groupETag(g *store.Group) string { return g.ETag }

// writeGroup validates g against the stored record and writes it.
func (h *handler) writeGroup(r *http.Request, rq *request, g *store.Group, pathID, etag string, mustCreate bool) (*store.Group, *apiError) {
	prev, aerr := findPrevious(r.Context(), h.store.GetGroup, pathID, g.EnrollmentGroupID, codeGroupNotFound, "enrollment group")
	if aerr != nil {
		return nil, aerr
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
	h.audit(rq, changeAction(prev != nil), "enrollmentGroup", stored.EnrollmentGroupID, stored.ETag)
	return stored, nil
}

func (h *handler) deleteGroup(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	h.serveDelete(w, r, rq, id, h.store.DeleteGroup, codeGroupNotFound, "enrollment group", "enrollmentGroup")
}

func (h *handler) queryGroups(w http.ResponseWriter, r *http.Request, rq *request) {
	queryRecords(h, w, r, rq, h.store.ListGroups, groupWithoutKeys, "EnrollmentGroup")
}
