package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/store"
)

// One TPM enrolled under two registration ids is allowed (the cloud allows
// it too) but is almost always a mistake: a copied endorsement key, or a
// device re-enrolled under a new id without deleting the old enrollment;
// the TPM can then provision as either. A write that creates that state
// succeeds with a warning: logged, and answered in wire.WarningHeader.

// Bounds of a warning's text.
const (
	// warnIDs is how many other registration ids one warning names.
	warnIDs = 5
	// warnItems is how many enrollments a bulk answer's warning names,
	// and how many it logs one line for.
	warnItems = 10
)

// sharedEK is an enrollment whose endorsement key other enrollments share.
type sharedEK struct {
	id     string   // the enrollment written
	others []string // the other registration ids of its key
}

// String names the enrollment and (some of) the others.
func (s sharedEK) String() string {
	names := s.others
	more := ""
	if len(names) > warnIDs {
		names, more = names[:warnIDs], fmt.Sprintf(" and %d more", len(s.others)-warnIDs)
	}
	return fmt.Sprintf("%s (also %s%s)", s.id, strings.Join(names, ", "), more)
}

// findSharedEK looks up the other enrollments of e's endorsement key after
// e was written; ok is false when there are none (or e is not a TPM
// enrollment). A failed lookup is logged and reported as none: the write
// has succeeded.
func (h *handler) findSharedEK(ctx context.Context, rq *request, e *store.Enrollment) (sharedEK, bool) {
	a := e.Attestation
	if a.Type != store.AttestationTPM || a.TPM == nil || a.TPM.EndorsementKey == "" {
		return sharedEK{}, false
	}
	ids, err := h.store.EnrollmentIDsByEK(ctx, a.TPM.EndorsementKey)
	if err != nil {
		h.log.Error("looking up other enrollments of an endorsement key", "trackingId", rq.trackingID,
			"registrationId", e.RegistrationID, "err", err)
		return sharedEK{}, false
	}
	self := strings.ToLower(e.RegistrationID)
	s := sharedEK{id: self}
	for _, id := range ids {
		if id != self {
			s.others = append(s.others, id)
		}
	}
	return s, len(s.others) > 0
}

// logSharedEK logs one enrollment whose endorsement key others share.
func (h *handler) logSharedEK(rq *request, s sharedEK) {
	h.log.Warn("endorsement key enrolled under more than one registration id: the TPM can provision as any of them",
		"trackingId", rq.trackingID, "registrationId", s.id, "alsoEnrolledAs", s.others)
}

// warnSharedEKs looks at the enrollments a request has written (one for a
// PUT, the created and updated items of a bulk request): when the
// endorsement key of any is also enrolled under other ids, the answer
// carries one header naming them (at most warnItems, with a count) and
// each of those is logged. It runs before the answer is written.
func (h *handler) warnSharedEKs(ctx context.Context, w http.ResponseWriter, rq *request, written []*store.Enrollment) {
	var shared []sharedEK
	for _, e := range written {
		if s, ok := h.findSharedEK(ctx, rq, e); ok {
			shared = append(shared, s)
		}
	}
	if len(shared) == 0 {
		return
	}
	names := make([]string, 0, min(len(shared), warnItems))
	for i, s := range shared {
		if i == warnItems {
			break
		}
		h.logSharedEK(rq, s)
		names = append(names, s.String())
	}
	if len(shared) > warnItems {
		h.log.Warn("more enrollments of this request share an endorsement key", "trackingId", rq.trackingID,
			"notLogged", len(shared)-warnItems)
	}
	more := ""
	if len(shared) > warnItems {
		more = fmt.Sprintf(" and %d more", len(shared)-warnItems)
	}
	w.Header().Add(wire.WarningHeader, "endorsement key enrolled under more than one registration id: "+
		strings.Join(names, "; ")+more)
}
