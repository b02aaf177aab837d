package api

import (
	"net/http"

	"github.com/tpmdps/dpsd/store"
)

func (h *handler) getRegistration(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	getRecord(h, w, r, rq, id, h.store.GetRegistration, registrationView, registrationETag, codeRegistrationMissing, "registration")
}

// registrationView is reg as answers carry it: a registration holds no
// secret in its JSON form (its hub key is never serialised).
func registrationView(reg *store.Registration) *store.Registration { return reg }

// registrationETag is the etag of reg.
func registrationETag(reg *store.Registration) string { return reg.ETag }

// deleteRegistration forgets a device's registration, so that its next
// register request is an initial assignment.
func (h *handler) deleteRegistration(w http.ResponseWriter, r *http.Request, rq *request, id string) {
	h.serveDelete(w, r, rq, id, h.store.DeleteRegistration, codeRegistrationMissing, "registration", "registration")
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
