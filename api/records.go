package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/tpmdps/dpsd/store"
)

// The handler shapes shared by enrollments, enrollment groups and
// registrations (kinds.go builds on them for the first two). Each passes
// its store calls and how it is named:
// notFound is the DPS code of a missing record, what its name in error
// messages ("enrollment group") and kind its name in audit lines
// ("enrollmentGroup").

// getRecord answers GET of one record: the path id is checked, the record
// read with get and returned, as view shows it, with its etag.
func getRecord[T any](h *handler, w http.ResponseWriter, r *http.Request, rq *request, id string,
	get func(context.Context, string) (T, error), view func(T) T, etag func(T) string, notFound int, what string) {
	if err := checkPathID(id); err != nil {
		h.writeError(w, rq, err)
		return
	}
	v, err := get(r.Context(), id)
	if err != nil {
		h.writeError(w, rq, storeError(err, notFound, what))
		return
	}
	setETag(w, etag(v))
	h.writeJSON(w, http.StatusOK, view(v))
}

// findPrevious returns the stored record that a write of pathID (or, when
// that is empty, bodyID) would replace and true, or the zero T and false
// when there is none or the id is not valid (validation reports that).
func findPrevious[T any](ctx context.Context, get func(context.Context, string) (T, error), pathID, bodyID string, notFound int, what string) (T, bool, *apiError) {
	var zero T
	lookup := pathID
	if lookup == "" {
		lookup = bodyID
	}
	if ValidateID(lookup) != nil {
		return zero, false, nil
	}
	prev, err := get(ctx, lookup)
	switch {
	case err == nil:
		return prev, true, nil
	case errors.Is(err, store.ErrNotFound):
		return zero, false, nil
	default:
		return zero, false, storeError(err, notFound, what)
	}
}

// deleteRecord deletes one record with del under the etag condition (""
// deletes unconditionally) after checking its id, and audits the change.
func (h *handler) deleteRecord(ctx context.Context, rq *request, id, etag string,
	del func(ctx context.Context, id, ifMatch string) error, notFound int, what, kind string) *apiError {
	if err := checkPathID(id); err != nil {
		return asAPIError(err)
	}
	if err := del(ctx, id, etag); err != nil {
		return storeError(err, notFound, what)
	}
	h.audit(rq, "delete", kind, strings.ToLower(id), "")
	return nil
}

// serveDelete answers DELETE of one record (204 when deleted).
func (h *handler) serveDelete(w http.ResponseWriter, r *http.Request, rq *request, id string,
	del func(ctx context.Context, id, ifMatch string) error, notFound int, what, kind string) {
	if err := h.deleteRecord(r.Context(), rq, id, ifMatch(r), del, notFound, what, kind); err != nil {
		h.writeError(w, rq, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// queryRecords answers a "*" query of a collection with one page of list,
// each item as view shows it.
func queryRecords[T any](h *handler, w http.ResponseWriter, r *http.Request, rq *request,
	list func(context.Context, store.Query) (store.Page[T], error), view func(T) T, itemType string) {
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
	p, err := list(r.Context(), q)
	if err != nil {
		h.writeError(w, rq, listError(err))
		return
	}
	for i := range p.Items {
		p.Items[i] = view(p.Items[i])
	}
	writePage(h, w, itemType, p)
}
