package api

import (
	"net/http"
	"strings"

	"github.com/tpmdps/dpsd/store"
)

func (h *handler) getRegistration(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	if err := checkPathID(id); err != nil {
		h.writeError(w, rq, err)
		return
	}
	reg, err := h.store.GetRegistration(r.Context(), id)
	if err != nil {
		h.writeError(w, rq, storeError(err, codeRegistrationMissing, "registration"))
		return
	}
	setETag(w, reg.ETag)
	h.writeJSON(w, http.StatusOK, reg)
}

// deleteRegistration forgets a device's registration, so that its next
// register request is an initial assignment.
func (h *handler) deleteRegistration(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	if err := checkPathID(id); err != nil {
		h.writeError(w, rq, err)
		return
	}
	if err := h.store.DeleteRegistration(r.Context(), id, ifMatch(r)); err != nil {
		h.writeError(w, rq, storeError(err, codeRegistrationMissing, "registration"))
		return
	}
	h.audit(rq, "delete", "registration", strings.ToLower(id), "")
	w.WriteHeader(http.StatusNoContent)
}

// queryRegistrations lists the registration states of one enrollment group, paged.
func (h *handler) queryRegistrations(w http.ResponseWriter, r *http.Request, rq *request, groupID string) {
	if err := checkPathID(groupID); err != nil {
		h.writeError(w, rq, err)
		return
	}
	if _, err := readBody(w, r, h.cfg.MaxBodyBytes); err != nil {
		h.writeError(w, rq, err)
		return
	}
	q, err := pageQuery(r)
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	p, err := h.store.ListGroupRegistrations(r.Context(), groupID, q)
	if err != nil {
		h.writeError(w, rq, listError(err))
		return
	}
	writePage[*store.Registration](h, w, "DeviceRegistration", p)
}
