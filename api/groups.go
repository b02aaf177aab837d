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
// with a symmetric group key (devices use keys derived from it), an X.509
// signing CA, or (an extension of this service; the cloud retired its TPM
// groups) TPM: roots that the devices' EK certificates chain to.
func ValidateGroup(g *store.Group, pathID string, prev *store.Group, rnd io.Reader) error {
	if err := normalizeID(&g.EnrollmentGroupID, pathID, "enrollmentGroupId"); err != nil {
		return err
	}
	a := &g.Attestation
	switch a.Type {
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
		if err := validateTPMGroup(a); err != nil {
			return err
		}
	case "":
		return invalid("attestation.type is required (symmetricKey, x509 or tpm)")
	default:
		return invalid("attestation.type must be symmetricKey, x509 or tpm")
	}
	var prevSettings *store.EnrollmentSettings
	if prev != nil {
		prevSettings = &prev.EnrollmentSettings
	}
	return validateCommon(&g.EnrollmentSettings, prevSettings)
}

func (h *handler) getGroup(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	h.groups.serveGet(h, w, r, rq, id)
}

func (h *handler) putGroup(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	h.groups.servePut(h, w, r, rq, id)
}

func (h *handler) deleteGroup(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	h.groups.serveDelete(h, w, r, rq, id)
}

func (h *handler) queryGroups(w http.ResponseWriter, r *http.Request, rq *request) {
	h.groups.serveQuery(h, w, r, rq)
}
