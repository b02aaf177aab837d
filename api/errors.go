package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/store"
)

// DPS-style error codes: code/1000 is the HTTP status.
const (
	codeBadRequest          = 400000
	codeBadAPIVersion       = 400001
	codeInvalidArgument     = 400004
	codeMalformedJSON       = 400005
	codeBadQuery            = 400006
	codeTooManyItems        = 400007
	codeUnauthorized        = 401002
	codeForbidden           = 403001
	codeQuotaExceeded       = 403002
	codeNoRoute             = 404000
	codeEnrollmentNotFound  = 404201
	codeGroupNotFound       = 404202
	codeRegistrationMissing = 404203
	codeLinkedHubNotFound   = 404204
	codeMethodNotAllowed    = 405000
	codeRequestTimeout      = 408000
	codeConflict            = 409201
	codePreconditionFailed  = 412002
	codeTooLarge            = 413001
	codeInternal            = 500000
	codeUnavailable         = 503000
)

// apiError is an error that knows the DPS code it is answered with.
type apiError struct {
	code int
	msg  string
	err  error
}

func (e *apiError) Error() string {
	if e.err != nil {
		return fmt.Sprintf("%s: %v", e.msg, e.err)
	}
	return e.msg
}

func (e *apiError) Unwrap() error { return e.err }

// status is the HTTP status of the error's code.
func (e *apiError) status() int { return e.code / 1000 }

// errorf builds an apiError with a formatted message.
func errorf(code int, format string, args ...any) *apiError {
	return &apiError{code: code, msg: fmt.Sprintf(format, args...)}
}

// invalid is a 400 validation error.
func invalid(format string, args ...any) *apiError {
	return errorf(codeInvalidArgument, format, args...)
}

// storeError maps store errors onto API errors; notFound is the code for ErrNotFound.
func storeError(err error, notFound int, what string) *apiError {
	var ae *apiError
	var le *store.LimitError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &le):
		return &apiError{code: codeQuotaExceeded, err: err, msg: fmt.Sprintf(
			"the service allows at most %d %s: delete one before creating another, or raise the limit (dpsd setting max-groups)", le.Limit, le.What)}
	case errors.Is(err, store.ErrNotFound):
		return &apiError{code: notFound, msg: what + " not found", err: err}
	case errors.Is(err, store.ErrPreconditionFailed):
		return &apiError{code: codePreconditionFailed, msg: "precondition failed: the etag does not match " + what, err: err}
	case errors.Is(err, store.ErrInvalidID) || errors.Is(err, store.ErrInvalidRecord):
		return &apiError{code: codeInvalidArgument, msg: "invalid " + what, err: err}
	case errors.Is(err, store.ErrBadContinuation):
		return &apiError{code: codeBadQuery, msg: "invalid x-ms-continuation token", err: err}
	case errors.Is(err, store.ErrClosed):
		return &apiError{code: codeUnavailable, msg: "service unavailable", err: err}
	default:
		return &apiError{code: codeInternal, msg: "internal error", err: err}
	}
}

// writeError answers with the DPS error shape. Internal details are logged, not sent.
func (h *handler) writeError(w http.ResponseWriter, rq *request, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{code: codeInternal, msg: "internal error", err: err}
	}
	msg := ae.msg
	if ae.code/1000 >= 500 {
		h.log.Error("request failed", "trackingId", rq.trackingID, "method", rq.method, "path", rq.path, "err", err)
	} else {
		h.log.Debug("request refused", "trackingId", rq.trackingID, "method", rq.method, "path", rq.path, "code", ae.code, "err", err)
	}
	body := wire.Error{
		ErrorCode:    ae.code,
		TrackingID:   rq.trackingID,
		Message:      msg,
		TimestampUTC: h.now().UTC().Format(time.RFC3339),
	}
	h.writeJSON(w, ae.status(), body)
}

// writeJSON writes v as the JSON body with status.
func (h *handler) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		h.log.Error("encoding response", "err", err)
		status = http.StatusInternalServerError
		b = []byte(`{"errorCode":500000,"message":"internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
