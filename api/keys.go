package api

import (
	"context"
	"net/http"
	"strings"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/store"
)

// Symmetric keys leave the service only through the attestation mechanism
// routes, as in the DPS cloud service: records in answers (GET, query, PUT)
// carry their attestation without keys, so that a read-only policy never
// holds a key (a group key would let it derive the key of any device id).
// POST {enrollments|enrollmentGroups}/{id}/attestationmechanism answers the
// whole attestation and needs the write right.

// withoutKeys returns a with its symmetric keys removed; the type, the TPM
// endorsement key (public) and the X.509 certificates stay. An empty
// symmetricKey object is kept so that clients still see its kind.
func withoutKeys(a store.Attestation) store.Attestation {
	if a.SymmetricKey != nil {
		a.SymmetricKey = &store.SymmetricKeyAttestation{}
	}
	return a
}

// enrollmentWithoutKeys is a copy of e as answers carry it: without keys
// and with its webhook URL's function key masked.
func enrollmentWithoutKeys(e *store.Enrollment) *store.Enrollment {
	c := *e
	c.Attestation = withoutKeys(c.Attestation)
	c.CustomAllocationDefinition = maskedDefinition(c.CustomAllocationDefinition)
	return &c
}

// groupWithoutKeys is a copy of g as answers carry it: without keys and
// with its webhook URL's function key masked.
func groupWithoutKeys(g *store.Group) *store.Group {
	c := *g
	c.Attestation = withoutKeys(c.Attestation)
	c.CustomAllocationDefinition = maskedDefinition(c.CustomAllocationDefinition)
	return &c
}

// maskedDefinition is d with its webhook URL's query masked ("?****"), as
// the cloud service echoes it: a function key is a secret.
func maskedDefinition(d *store.CustomAllocationDefinition) *store.CustomAllocationDefinition {
	if d == nil {
		return nil
	}
	c := *d
	c.WebhookURL = allocator.MaskWebhookURL(c.WebhookURL)
	return &c
}

// serveAttestation answers POST .../{id}/attestationmechanism with the
// attestation, keys included, of the record get reads (see
// kind.serveAttestation).
func serveAttestation[T any](h *handler, w http.ResponseWriter, r *http.Request, rq *request, id string,
	get func(context.Context, string) (T, error), attestation func(T) store.Attestation, notFound int, what, kind string) {
	if err := checkPathID(id); err != nil {
		h.writeError(w, rq, err)
		return
	}
	v, err := get(r.Context(), id)
	if err != nil {
		h.writeError(w, rq, storeError(err, notFound, what))
		return
	}
	h.audit(rq, "readKeys", kind, strings.ToLower(id), "")
	h.writeJSON(w, http.StatusOK, attestation(v))
}

func (h *handler) enrollmentAttestation(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	h.enrollments.serveAttestation(h, w, r, rq, id)
}

func (h *handler) groupAttestation(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	h.groups.serveAttestation(h, w, r, rq, id)
}
