package metrics

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// Store returns s with every operation timed (store_operation_duration_seconds)
// and its failures counted (store_errors_total). Methods added to
// store.Store later pass through untimed until listed here. When s writes
// bulk imports in one transaction (store.EnrollmentBatcher), so does the
// store returned.
func (m *Metrics) Store(s store.Store) store.Store {
	t := &timedStore{Store: s, m: m}
	if b, ok := s.(store.EnrollmentBatcher); ok {
		return &timedBatchStore{timedStore: t, batcher: b}
	}
	return t
}

// timedBatchStore is a timedStore whose engine writes many enrollments in
// one transaction: the wrapper keeps that ability visible to the API.
type timedBatchStore struct {
	*timedStore
	batcher store.EnrollmentBatcher
}

// PutEnrollments is timed.
func (t *timedBatchStore) PutEnrollments(ctx context.Context, es []*store.Enrollment) ([]*store.Enrollment, error) {
	return timed(t.timedStore, "PutEnrollments", func() ([]*store.Enrollment, error) { return t.batcher.PutEnrollments(ctx, es) })
}

// timedStore times the operations of the store it embeds.
type timedStore struct {
	store.Store
	m *Metrics
}

// done records one operation.
func (t *timedStore) done(op string, start time.Time, err error) {
	t.m.storeTime.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrPreconditionFailed) {
		t.m.storeErrors.WithLabelValues(op).Inc()
	}
}

// timed runs fn as operation op.
func timed[T any](t *timedStore, op string, fn func() (T, error)) (T, error) {
	start := time.Now()
	v, err := fn()
	t.done(op, start, err)
	return v, err
}

// timedErr runs fn as operation op.
func (t *timedStore) timedErr(op string, fn func() error) error {
	start := time.Now()
	err := fn()
	t.done(op, start, err)
	return err
}

// GetEnrollment is timed.
func (t *timedStore) GetEnrollment(ctx context.Context, id string) (*store.Enrollment, error) {
	return timed(t, "GetEnrollment", func() (*store.Enrollment, error) { return t.Store.GetEnrollment(ctx, id) })
}

// PutEnrollment is timed.
func (t *timedStore) PutEnrollment(ctx context.Context, e *store.Enrollment, ifMatch string) (*store.Enrollment, error) {
	return timed(t, "PutEnrollment", func() (*store.Enrollment, error) { return t.Store.PutEnrollment(ctx, e, ifMatch) })
}

// DeleteEnrollment is timed.
func (t *timedStore) DeleteEnrollment(ctx context.Context, id, ifMatch string) error {
	return t.timedErr("DeleteEnrollment", func() error { return t.Store.DeleteEnrollment(ctx, id, ifMatch) })
}

// ListEnrollments is timed.
func (t *timedStore) ListEnrollments(ctx context.Context, q store.Query) (store.Page[*store.Enrollment], error) {
	return timed(t, "ListEnrollments", func() (store.Page[*store.Enrollment], error) { return t.Store.ListEnrollments(ctx, q) })
}

// CountEnrollments is timed.
func (t *timedStore) CountEnrollments(ctx context.Context) (int, error) {
	return timed(t, "CountEnrollments", func() (int, error) { return t.Store.CountEnrollments(ctx) })
}

// EnrollmentIDsByEK is timed.
func (t *timedStore) EnrollmentIDsByEK(ctx context.Context, ek string) ([]string, error) {
	return timed(t, "EnrollmentIDsByEK", func() ([]string, error) { return t.Store.EnrollmentIDsByEK(ctx, ek) })
}

// GetGroup is timed.
func (t *timedStore) GetGroup(ctx context.Context, id string) (*store.Group, error) {
	return timed(t, "GetGroup", func() (*store.Group, error) { return t.Store.GetGroup(ctx, id) })
}

// PutGroup is timed.
func (t *timedStore) PutGroup(ctx context.Context, g *store.Group, ifMatch string) (*store.Group, error) {
	return timed(t, "PutGroup", func() (*store.Group, error) { return t.Store.PutGroup(ctx, g, ifMatch) })
}

// DeleteGroup is timed.
func (t *timedStore) DeleteGroup(ctx context.Context, id, ifMatch string) error {
	return t.timedErr("DeleteGroup", func() error { return t.Store.DeleteGroup(ctx, id, ifMatch) })
}

// ListGroups is timed.
func (t *timedStore) ListGroups(ctx context.Context, q store.Query) (store.Page[*store.Group], error) {
	return timed(t, "ListGroups", func() (store.Page[*store.Group], error) { return t.Store.ListGroups(ctx, q) })
}

// GroupsRevision is timed.
func (t *timedStore) GroupsRevision(ctx context.Context) (uint64, error) {
	return timed(t, "GroupsRevision", func() (uint64, error) { return t.Store.GroupsRevision(ctx) })
}

// CountGroups is timed.
func (t *timedStore) CountGroups(ctx context.Context) (int, error) {
	return timed(t, "CountGroups", func() (int, error) { return t.Store.CountGroups(ctx) })
}

// GetRegistration is timed.
func (t *timedStore) GetRegistration(ctx context.Context, id string) (*store.Registration, error) {
	return timed(t, "GetRegistration", func() (*store.Registration, error) { return t.Store.GetRegistration(ctx, id) })
}

// DeleteRegistration is timed.
func (t *timedStore) DeleteRegistration(ctx context.Context, id, ifMatch string) error {
	return t.timedErr("DeleteRegistration", func() error { return t.Store.DeleteRegistration(ctx, id, ifMatch) })
}

// ListGroupRegistrations is timed.
func (t *timedStore) ListGroupRegistrations(ctx context.Context, groupID string, q store.Query) (store.Page[*store.Registration], error) {
	return timed(t, "ListGroupRegistrations", func() (store.Page[*store.Registration], error) {
		return t.Store.ListGroupRegistrations(ctx, groupID, q)
	})
}

// CountGroupRegistrations is timed.
func (t *timedStore) CountGroupRegistrations(ctx context.Context, groupID string) (int, error) {
	return timed(t, "CountGroupRegistrations", func() (int, error) { return t.Store.CountGroupRegistrations(ctx, groupID) })
}

// RecordRegistration is timed.
func (t *timedStore) RecordRegistration(ctx context.Context, r *store.Registration, op *store.Operation) (*store.Registration, error) {
	return timed(t, "RecordRegistration", func() (*store.Registration, error) { return t.Store.RecordRegistration(ctx, r, op) })
}

// PutOperation is timed.
func (t *timedStore) PutOperation(ctx context.Context, op *store.Operation) error {
	return t.timedErr("PutOperation", func() error { return t.Store.PutOperation(ctx, op) })
}

// GetOperation is timed.
func (t *timedStore) GetOperation(ctx context.Context, id string) (*store.Operation, error) {
	return timed(t, "GetOperation", func() (*store.Operation, error) { return t.Store.GetOperation(ctx, id) })
}

// Sweep is timed.
func (t *timedStore) Sweep(ctx context.Context, now time.Time) (int, error) {
	return timed(t, "Sweep", func() (int, error) { return t.Store.Sweep(ctx, now) })
}

// Backup is timed.
func (t *timedStore) Backup(ctx context.Context, w io.Writer) (int64, error) {
	return timed(t, "Backup", func() (int64, error) { return t.Store.Backup(ctx, w) })
}
