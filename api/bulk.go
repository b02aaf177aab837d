package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"

	"github.com/tpmdps/dpsd/store"
)

// Bulk operation modes (the DPS bulk enrollment API).
const (
	// BulkCreate creates every item; an existing id is a per-item 409.
	BulkCreate = "create"
	// BulkUpdate creates or replaces every item.
	BulkUpdate = "update"
	// BulkUpdateIfMatchETag replaces items whose etag field matches the stored one.
	BulkUpdateIfMatchETag = "updateIfMatchETag"
	// BulkDelete deletes every item (conditionally when it carries an etag).
	BulkDelete = "delete"
)

// BulkResult is the answer to a bulk operation: per-item failures, the rest succeeded.
type BulkResult struct {
	IsSuccessful bool        `json:"isSuccessful"`
	Errors       []BulkError `json:"errors"`
}

// BulkError is one failed item of a bulk operation. RegistrationID is set for
// enrollments, EnrollmentGroupID for groups; ErrorCode/1000 is an HTTP status.
type BulkError struct {
	RegistrationID    string `json:"registrationId,omitempty"`
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
	ErrorCode         int    `json:"errorCode"`
	ErrorStatus       string `json:"errorStatus"`
}

// bulkItem is one decoded item of a bulk request.
type bulkItem struct {
	id      string
	err     *apiError
	enr     *store.Enrollment
	grp     *store.Group
	etag    string
	existed bool
}

// readBulk reads {"mode", key: [...]} and checks the mode and item count.
func (h *handler) readBulk(w http.ResponseWriter, r *http.Request, key string) (string, []json.RawMessage, error) {
	body, err := readBody(w, r, h.cfg.MaxBulkBytes)
	if err != nil {
		return "", nil, err
	}
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil {
		return "", nil, jsonError("bulk operation", err)
	}
	var mode string
	if err := json.Unmarshal(req["mode"], &mode); err != nil {
		return "", nil, invalid("mode must be a string")
	}
	switch mode {
	case BulkCreate, BulkUpdate, BulkUpdateIfMatchETag, BulkDelete:
	default:
		return "", nil, invalid("mode must be create, update, updateIfMatchETag or delete")
	}
	var items []json.RawMessage
	if err := json.Unmarshal(req[key], &items); err != nil {
		return "", nil, invalid("%s must be an array", key)
	}
	if len(items) == 0 {
		return "", nil, invalid("%s is empty", key)
	}
	if len(items) > MaxBulkItems {
		return "", nil, errorf(codeTooManyItems, "at most %d items per bulk operation", MaxBulkItems)
	}
	return mode, items, nil
}

// idOf extracts an id field from an item that did not decode, for the error report.
func idOf(raw json.RawMessage, field string) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return ""
	}
	var id string
	if json.Unmarshal(m[field], &id) != nil {
		return ""
	}
	return id
}

// markDuplicates fails every later item naming an id already seen.
func markDuplicates(items []bulkItem) {
	seen := make(map[string]bool, len(items))
	for i := range items {
		if items[i].err != nil || items[i].id == "" {
			continue
		}
		k := strings.ToLower(items[i].id)
		if seen[k] {
			items[i].err = invalid("%s appears more than once in the request", items[i].id)
		}
		seen[k] = true
	}
}

// runBulk calls fn for every index with a bounded number of workers, so the
// store can coalesce concurrent commits. It stops handing out work when ctx ends.
func runBulk(ctx context.Context, n, workers int, fn func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for i := range next {
				fn(i)
			}
		})
	}
feed:
	for i := 0; i < n; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
}

// notRun is the error of items left over when the request was cancelled.
func notRun() *apiError { return errorf(codeUnavailable, "not processed: request cancelled") }

func (h *handler) bulkEnrollments(w http.ResponseWriter, r *http.Request, rq *request) {
	mode, raws, err := h.readBulk(w, r, "enrollments")
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	items := make([]bulkItem, len(raws))
	for i, raw := range raws {
		e, err := DecodeEnrollment(raw)
		if err != nil {
			items[i] = bulkItem{id: idOf(raw, "registrationId"), err: asAPIError(err)}
			continue
		}
		items[i] = bulkItem{id: e.RegistrationID, enr: e, etag: e.ETag}
		if e.RegistrationID == "" {
			items[i].err = invalid("registrationId is required")
		}
	}
	markDuplicates(items)
	batcher, batch := h.store.(store.EnrollmentBatcher)
	batch = batch && (mode == BulkCreate || mode == BulkUpdate)
	done := make([]bool, len(items))
	runBulk(r.Context(), len(items), h.cfg.BulkWorkers, func(i int) {
		done[i] = true
		it := &items[i]
		if it.err != nil {
			return
		}
		switch {
		case mode == BulkDelete:
			it.err = h.deleteRecord(r.Context(), rq, it.id, it.etag, h.store.DeleteEnrollment, codeEnrollmentNotFound, "enrollment", "enrollment")
		case batch:
			it.existed, it.err = h.prepareEnrollment(r.Context(), it.enr, "", mode == BulkCreate)
		default:
			etag := ""
			if mode == BulkUpdateIfMatchETag {
				etag = it.etag
			}
			_, it.err = h.writeEnrollment(r, rq, it.enr, "", etag, mode == BulkCreate)
		}
	})
	if batch {
		h.commitEnrollments(r.Context(), rq, batcher, items, done)
	}
	h.writeJSON(w, http.StatusOK, bulkResult(items, done, false))
}

func (h *handler) bulkGroups(w http.ResponseWriter, r *http.Request, rq *request) {
	mode, raws, err := h.readBulk(w, r, "enrollmentGroups")
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	items := make([]bulkItem, len(raws))
	for i, raw := range raws {
		g, err := DecodeGroup(raw)
		if err != nil {
			items[i] = bulkItem{id: idOf(raw, "enrollmentGroupId"), err: asAPIError(err)}
			continue
		}
		items[i] = bulkItem{id: g.EnrollmentGroupID, grp: g, etag: g.ETag}
		if g.EnrollmentGroupID == "" {
			items[i].err = invalid("enrollmentGroupId is required")
		}
	}
	markDuplicates(items)
	done := make([]bool, len(items))
	runBulk(r.Context(), len(items), h.cfg.BulkWorkers, func(i int) {
		done[i] = true
		it := &items[i]
		if it.err != nil {
			return
		}
		switch mode {
		case BulkDelete:
			it.err = h.deleteRecord(r.Context(), rq, it.id, it.etag, h.store.DeleteGroup, codeGroupNotFound, "enrollment group", "enrollmentGroup")
		default:
			etag := ""
			if mode == BulkUpdateIfMatchETag {
				etag = it.etag
			}
			_, it.err = h.writeGroup(r, rq, it.grp, "", etag, mode == BulkCreate)
		}
	})
	h.writeJSON(w, http.StatusOK, bulkResult(items, done, true))
}

// bulkResult reports the failed items; items never run (done false, the
// request was cancelled) fail as not processed. Ids are reported as
// enrollmentGroupId for groups, registrationId otherwise.
func bulkResult(items []bulkItem, done []bool, groups bool) BulkResult {
	res := BulkResult{IsSuccessful: true, Errors: []BulkError{}}
	for i, it := range items {
		if !done[i] && it.err == nil {
			it.err = notRun()
		}
		if it.err == nil {
			continue
		}
		res.IsSuccessful = false
		be := BulkError{ErrorCode: it.err.code, ErrorStatus: it.err.msg}
		if groups {
			be.EnrollmentGroupID = it.id
		} else {
			be.RegistrationID = it.id
		}
		res.Errors = append(res.Errors, be)
	}
	return res
}

// commitEnrollments writes the validated items of a bulk create or update in
// one store transaction. Between the existence check and this write another
// writer may create the same id; the bulk write then replaces it, as a PUT would.
func (h *handler) commitEnrollments(ctx context.Context, rq *request, b store.EnrollmentBatcher, items []bulkItem, done []bool) {
	var idx []int
	var es []*store.Enrollment
	for i := range items {
		if done[i] && items[i].err == nil {
			idx = append(idx, i)
			es = append(es, items[i].enr)
		}
	}
	if len(es) == 0 {
		return
	}
	out, err := b.PutEnrollments(ctx, es)
	if err != nil {
		aerr := storeError(err, codeEnrollmentNotFound, "enrollment")
		for _, i := range idx {
			items[i].err = aerr
		}
		return
	}
	for k, i := range idx {
		h.audit(rq, changeAction(items[i].existed), "enrollment", out[k].RegistrationID, out[k].ETag)
	}
}
