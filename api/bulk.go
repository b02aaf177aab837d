package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"

	"github.com/tpmdps/dpsd/api/wire"
)

// bulkItem is one decoded item of a bulk request.
type bulkItem[T any] struct {
	id      string
	err     *apiError
	rec     T
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
	case wire.BulkCreate, wire.BulkUpdate, wire.BulkUpdateIfMatchETag, wire.BulkDelete:
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
func markDuplicates[T any](items []bulkItem[T]) {
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
	serveBulk(h, w, r, rq, h.enrollments)
}

func (h *handler) bulkGroups(w http.ResponseWriter, r *http.Request, rq *request) {
	serveBulk(h, w, r, rq, h.groups)
}

// serveBulk answers a bulk operation on records of kind k: every item is
// decoded, validated and written (or deleted) on its own, with a bounded
// number of workers so that the store coalesces their commits; creates and
// unconditional updates go to the store in one transaction when it can
// (kind.putMany). The answer lists the items that failed.
func serveBulk[T any](h *handler, w http.ResponseWriter, r *http.Request, rq *request, k *kind[T]) {
	mode, raws, err := h.readBulk(w, r, k.bulkKey)
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	ctx := r.Context()
	items := make([]bulkItem[T], len(raws))
	for i, raw := range raws {
		v, err := k.decode(raw)
		if err != nil {
			items[i] = bulkItem[T]{id: idOf(raw, k.idField), err: asAPIError(err)}
			continue
		}
		items[i] = bulkItem[T]{id: k.id(v), rec: v, etag: k.etag(v)}
		if items[i].id == "" {
			items[i].err = invalid("%s is required", k.idField)
		}
	}
	markDuplicates(items)
	batch := k.putMany != nil && (mode == wire.BulkCreate || mode == wire.BulkUpdate)
	done := make([]bool, len(items))
	runBulk(ctx, len(items), h.cfg.BulkWorkers, func(i int) {
		done[i] = true
		it := &items[i]
		if it.err != nil {
			return
		}
		switch {
		case mode == wire.BulkDelete:
			it.err = h.deleteRecord(ctx, rq, it.id, it.etag, k.del, k.notFound, k.what, k.audit)
		case batch:
			it.existed, it.err = k.prepare(ctx, it.rec, "", mode == wire.BulkCreate)
		default:
			etag := ""
			if mode == wire.BulkUpdateIfMatchETag {
				etag = it.etag
			}
			_, it.err = k.write(ctx, h, rq, it.rec, "", etag, mode == wire.BulkCreate)
		}
	})
	if batch {
		commitBulk(ctx, h, rq, k, items, done)
	}
	if k.written != nil && mode != wire.BulkDelete {
		var written []T
		for i, it := range items {
			if done[i] && it.err == nil {
				written = append(written, it.rec)
			}
		}
		k.written(ctx, w, rq, written)
	}
	h.writeJSON(w, http.StatusOK, bulkResult(items, done, k.group))
}

// bulkResult reports the failed items; items never run (done false, the
// request was cancelled) fail as not processed. Ids are reported as
// enrollmentGroupId for groups, registrationId otherwise.
func bulkResult[T any](items []bulkItem[T], done []bool, groups bool) wire.BulkResult {
	res := wire.BulkResult{IsSuccessful: true, Errors: []wire.BulkError{}}
	for i, it := range items {
		if !done[i] && it.err == nil {
			it.err = notRun()
		}
		if it.err == nil {
			continue
		}
		res.IsSuccessful = false
		be := wire.BulkError{ErrorCode: it.err.code, ErrorStatus: it.err.msg}
		if groups {
			be.EnrollmentGroupID = it.id
		} else {
			be.RegistrationID = it.id
		}
		res.Errors = append(res.Errors, be)
	}
	return res
}

// commitBulk writes the validated items of a bulk create or update in
// one store transaction (k.putMany). Between the existence check and this
// write another writer may create the same id; the bulk write then
// replaces it, as a PUT would.
func commitBulk[T any](ctx context.Context, h *handler, rq *request, k *kind[T], items []bulkItem[T], done []bool) {
	var idx []int
	var recs []T
	for i := range items {
		if done[i] && items[i].err == nil {
			idx = append(idx, i)
			recs = append(recs, items[i].rec)
		}
	}
	if len(recs) == 0 {
		return
	}
	out, err := k.putMany(ctx, recs)
	if err != nil {
		aerr := storeError(err, k.notFound, k.what)
		for _, i := range idx {
			items[i].err = aerr
		}
		return
	}
	for n, i := range idx {
		h.audit(rq, changeAction(items[i].existed), k.audit, k.id(out[n]), k.etag(out[n]))
	}
}
