package api

import (
	"context"
	"net/http"

	"github.com/tpmdps/dpsd/store"
)

// Individual enrollments and enrollment groups share their settings
// (store.EnrollmentSettings) and so their create, update, bulk, delete and
// attestation paths. A kind tells those paths the store calls and the names
// of one of the two; the paths are written once, over the kind.

// kind describes individual enrollments or enrollment groups to the paths
// they share. T is *store.Enrollment or *store.Group.
type kind[T any] struct {
	what     string // in error messages: "enrollment group"
	audit    string // in audit lines: "enrollmentGroup"
	idField  string // the JSON name of the id: "enrollmentGroupId"
	itemType string // x-ms-item-type of a query page: "EnrollmentGroup"
	bulkKey  string // the array of a bulk request: "enrollmentGroups"
	group    bool   // bulk errors name the item's enrollmentGroupId
	notFound int    // the DPS code of a missing record

	decode   func([]byte) (T, error)
	validate func(v T, pathID string, prev T) error
	id       func(T) string
	settings func(T) *store.EnrollmentSettings
	view     func(T) T // the record as answers carry it: without keys

	get  func(context.Context, string) (T, error)
	put  func(context.Context, T, string) (T, error)
	del  func(context.Context, string, string) error
	list func(context.Context, store.Query) (store.Page[T], error)
	// putMany writes many records unconditionally in one transaction; nil
	// when the store cannot (a bulk request then writes item by item).
	putMany func(context.Context, []T) ([]T, error)
	// written, when set, sees the records a request has written (one for
	// a PUT, the created and updated items of a bulk request) before the
	// answer is written, and may add warnings to it.
	written func(ctx context.Context, w http.ResponseWriter, rq *request, recs []T)
}

// enrollmentKind is the kind of individual enrollments of h's store.
func enrollmentKind(h *handler) *kind[*store.Enrollment] {
	st := h.store
	k := &kind[*store.Enrollment]{
		what: "enrollment", audit: "enrollment", idField: "registrationId", itemType: "Enrollment",
		bulkKey: "enrollments", notFound: codeEnrollmentNotFound,
		decode: DecodeEnrollment,
		validate: func(e *store.Enrollment, pathID string, prev *store.Enrollment) error {
			return ValidateEnrollment(e, pathID, prev, nil)
		},
		id:       func(e *store.Enrollment) string { return e.RegistrationID },
		settings: func(e *store.Enrollment) *store.EnrollmentSettings { return &e.EnrollmentSettings },
		view:     enrollmentWithoutKeys,
		get:      st.GetEnrollment, put: st.PutEnrollment, del: st.DeleteEnrollment, list: st.ListEnrollments,
		written: h.warnSharedEKs,
	}
	if b, ok := st.(store.EnrollmentBatcher); ok {
		k.putMany = b.PutEnrollments
	}
	return k
}

// groupKind is the kind of enrollment groups in st.
func groupKind(st store.Store) *kind[*store.Group] {
	return &kind[*store.Group]{
		what: "enrollment group", audit: "enrollmentGroup", idField: "enrollmentGroupId", itemType: "EnrollmentGroup",
		bulkKey: "enrollmentGroups", group: true, notFound: codeGroupNotFound,
		decode: DecodeGroup,
		validate: func(g *store.Group, pathID string, prev *store.Group) error {
			return ValidateGroup(g, pathID, prev, nil)
		},
		id:       func(g *store.Group) string { return g.EnrollmentGroupID },
		settings: func(g *store.Group) *store.EnrollmentSettings { return &g.EnrollmentSettings },
		view:     groupWithoutKeys,
		get:      st.GetGroup, put: st.PutGroup, del: st.DeleteGroup, list: st.ListGroups,
	}
}

// etag is the etag of v.
func (k *kind[T]) etag(v T) string { return k.settings(v).ETag }

// prepare validates v against the stored record a write of pathID (or of
// v's own id) would replace, keeping that record's keys when v has none,
// and reports whether one exists. With mustCreate, an existing record is
// a conflict.
func (k *kind[T]) prepare(ctx context.Context, v T, pathID string, mustCreate bool) (bool, *apiError) {
	prev, found, aerr := findPrevious(ctx, k.get, pathID, k.id(v), k.notFound, k.what)
	if aerr != nil {
		return false, aerr
	}
	if mustCreate && found {
		return true, errorf(codeConflict, "%s %s already exists", k.what, k.id(prev))
	}
	if err := k.validate(v, pathID, prev); err != nil {
		return found, asAPIError(err)
	}
	k.settings(v).ETag = ""
	return found, nil
}

// write validates v, writes it under the etag condition and audits the change.
func (k *kind[T]) write(ctx context.Context, h *handler, rq *request, v T, pathID, etag string, mustCreate bool) (T, *apiError) {
	var zero T
	existed, aerr := k.prepare(ctx, v, pathID, mustCreate)
	if aerr != nil {
		return zero, aerr
	}
	stored, err := k.put(ctx, v, etag)
	if err != nil {
		return zero, storeError(err, k.notFound, k.what)
	}
	h.audit(rq, changeAction(existed), k.audit, k.id(stored), k.etag(stored))
	return stored, nil
}

// servePut answers PUT of one record: the path id is checked, the body
// read and decoded, validated and stored under If-Match. The answer is the
// stored record without keys.
func (k *kind[T]) servePut(h *handler, w http.ResponseWriter, r *http.Request, rq *request, id string) {
	if err := checkPathID(id); err != nil {
		h.writeError(w, rq, err)
		return
	}
	body, err := readBody(w, r, h.cfg.MaxBodyBytes)
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	v, err := k.decode(body)
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	stored, aerr := k.write(r.Context(), h, rq, v, id, ifMatch(r), false)
	if aerr != nil {
		h.writeError(w, rq, aerr)
		return
	}
	if k.written != nil {
		k.written(r.Context(), w, rq, []T{stored})
	}
	setETag(w, k.etag(stored))
	h.writeJSON(w, http.StatusOK, k.view(stored))
}

// serveGet answers GET of one record.
func (k *kind[T]) serveGet(h *handler, w http.ResponseWriter, r *http.Request, rq *request, id string) {
	getRecord(h, w, r, rq, id, k.get, k.view, k.etag, k.notFound, k.what)
}

// serveDelete answers DELETE of one record.
func (k *kind[T]) serveDelete(h *handler, w http.ResponseWriter, r *http.Request, rq *request, id string) {
	h.serveDelete(w, r, rq, id, k.del, k.notFound, k.what, k.audit)
}

// serveQuery answers a "*" query with one page of records without keys.
func (k *kind[T]) serveQuery(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
	queryRecords(h, w, r, rq, k.list, k.view, k.itemType)
}

// serveAttestation answers POST .../{id}/attestationmechanism: the record's
// attestation with its keys (the DPS "Get Attestation Mechanism"
// operation). The route needs the write right; the read is audited.
func (k *kind[T]) serveAttestation(h *handler, w http.ResponseWriter, r *http.Request, rq *request, id string) {
	serveAttestation(h, w, r, rq, id, k.get, func(v T) store.Attestation { return k.settings(v).Attestation },
		k.notFound, k.what, k.audit)
}
