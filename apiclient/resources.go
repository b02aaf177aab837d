package apiclient

import (
	"context"
	"net/http"

	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/store"
)

// Bulk operation modes: package wire's values.
const (
	// BulkCreate creates every item; an existing id is a per-item 409.
	BulkCreate = wire.BulkCreate
	// BulkUpdate creates or replaces every item.
	BulkUpdate = wire.BulkUpdate
	// BulkUpdateIfMatchETag replaces items whose etag field matches the stored one.
	BulkUpdateIfMatchETag = wire.BulkUpdateIfMatchETag
	// BulkDelete deletes every item (conditionally when it carries an etag).
	BulkDelete = wire.BulkDelete
)

// BulkResult is the answer to a bulk operation: the items listed in Errors
// failed, the others succeeded. It is package wire's type.
type BulkResult = wire.BulkResult

// BulkError is one failed item; ErrorCode/1000 is an HTTP status. It is
// package wire's type.
type BulkError = wire.BulkError

// GetEnrollment returns the individual enrollment of registrationID, without
// symmetric keys (see GetEnrollmentAttestation).
func (c *Client) GetEnrollment(ctx context.Context, registrationID string) (*store.Enrollment, error) {
	r, err := c.do(ctx, http.MethodGet, "/enrollments/"+escape(registrationID), nil, nil)
	if err != nil {
		return nil, err
	}
	return decode[*store.Enrollment](r, "enrollment")
}

// GetEnrollmentAttestation returns the attestation of registrationID's
// enrollment with its symmetric keys (POST .../attestationmechanism, the
// DPS "Get Attestation Mechanism" operation). GetEnrollment and the queries
// return records without keys; this call needs a policy with the write right.
func (c *Client) GetEnrollmentAttestation(ctx context.Context, registrationID string) (*store.Attestation, error) {
	r, err := c.do(ctx, http.MethodPost, "/enrollments/"+escape(registrationID)+"/attestationmechanism", nil, nil)
	if err != nil {
		return nil, err
	}
	return decode[*store.Attestation](r, "attestation mechanism")
}

// PutEnrollment creates or replaces e; ifMatch ("" for none, "*" or an etag)
// makes the replacement conditional. It returns the enrollment as stored,
// without symmetric keys. An enrollment of type symmetricKey sent without
// keys keeps its stored keys (or gets generated ones when new).
func (c *Client) PutEnrollment(ctx context.Context, e *store.Enrollment, ifMatch string) (*store.Enrollment, error) {
	r, err := c.do(ctx, http.MethodPut, "/enrollments/"+escape(e.RegistrationID), e, etagHeader(ifMatch))
	if err != nil {
		return nil, err
	}
	return decode[*store.Enrollment](r, "enrollment")
}

// DeleteEnrollment deletes an enrollment (conditionally when ifMatch is not "").
func (c *Client) DeleteEnrollment(ctx context.Context, registrationID, ifMatch string) error {
	_, err := c.do(ctx, http.MethodDelete, "/enrollments/"+escape(registrationID), nil, etagHeader(ifMatch))
	return err
}

// QueryEnrollments returns one page of enrollments and the continuation token
// of the next ("" on the last page). pageSize 0 means the server's default.
func (c *Client) QueryEnrollments(ctx context.Context, pageSize int, continuation string) ([]*store.Enrollment, string, error) {
	return query[*store.Enrollment](ctx, c, "/enrollments/query", pageSize, continuation)
}

// EachEnrollment calls fn for every enrollment, page by page; an error from fn stops it.
func (c *Client) EachEnrollment(ctx context.Context, pageSize int, fn func(*store.Enrollment) error) error {
	return each(ctx, c, "/enrollments/query", pageSize, fn)
}

// BulkEnrollments applies mode to up to 10,000 enrollments in one request.
// Per-item failures are in the result, not the error.
func (c *Client) BulkEnrollments(ctx context.Context, mode string, es []*store.Enrollment) (*BulkResult, error) {
	body := struct {
		Mode        string              `json:"mode"`
		Enrollments []*store.Enrollment `json:"enrollments"`
	}{mode, es}
	r, err := c.do(ctx, http.MethodPost, "/enrollments", body, nil)
	if err != nil {
		return nil, err
	}
	return decode[*BulkResult](r, "bulk result")
}

// GetGroup returns an enrollment group, without symmetric keys (see
// GetGroupAttestation).
func (c *Client) GetGroup(ctx context.Context, groupID string) (*store.Group, error) {
	r, err := c.do(ctx, http.MethodGet, "/enrollmentGroups/"+escape(groupID), nil, nil)
	if err != nil {
		return nil, err
	}
	return decode[*store.Group](r, "enrollment group")
}

// GetGroupAttestation returns the attestation of an enrollment group with
// its symmetric keys, like GetEnrollmentAttestation (write right needed).
func (c *Client) GetGroupAttestation(ctx context.Context, groupID string) (*store.Attestation, error) {
	r, err := c.do(ctx, http.MethodPost, "/enrollmentGroups/"+escape(groupID)+"/attestationmechanism", nil, nil)
	if err != nil {
		return nil, err
	}
	return decode[*store.Attestation](r, "attestation mechanism")
}

// PutGroup creates or replaces g (conditionally when ifMatch is not "").
func (c *Client) PutGroup(ctx context.Context, g *store.Group, ifMatch string) (*store.Group, error) {
	r, err := c.do(ctx, http.MethodPut, "/enrollmentGroups/"+escape(g.EnrollmentGroupID), g, etagHeader(ifMatch))
	if err != nil {
		return nil, err
	}
	return decode[*store.Group](r, "enrollment group")
}

// DeleteGroup deletes an enrollment group (conditionally when ifMatch is not "").
func (c *Client) DeleteGroup(ctx context.Context, groupID, ifMatch string) error {
	_, err := c.do(ctx, http.MethodDelete, "/enrollmentGroups/"+escape(groupID), nil, etagHeader(ifMatch))
	return err
}

// QueryGroups returns one page of enrollment groups and the next continuation token.
func (c *Client) QueryGroups(ctx context.Context, pageSize int, continuation string) ([]*store.Group, string, error) {
	return query[*store.Group](ctx, c, "/enrollmentGroups/query", pageSize, continuation)
}

// EachGroup calls fn for every enrollment group, page by page.
func (c *Client) EachGroup(ctx context.Context, pageSize int, fn func(*store.Group) error) error {
	return each(ctx, c, "/enrollmentGroups/query", pageSize, fn)
}

// BulkGroups applies mode to up to 10,000 enrollment groups in one request.
func (c *Client) BulkGroups(ctx context.Context, mode string, gs []*store.Group) (*BulkResult, error) {
	body := struct {
		Mode   string         `json:"mode"`
		Groups []*store.Group `json:"enrollmentGroups"`
	}{mode, gs}
	r, err := c.do(ctx, http.MethodPost, "/enrollmentGroups", body, nil)
	if err != nil {
		return nil, err
	}
	return decode[*BulkResult](r, "bulk result")
}

// GetRegistration returns a device's registration state.
func (c *Client) GetRegistration(ctx context.Context, registrationID string) (*store.Registration, error) {
	r, err := c.do(ctx, http.MethodGet, "/registrations/"+escape(registrationID), nil, nil)
	if err != nil {
		return nil, err
	}
	return decode[*store.Registration](r, "registration")
}

// DeleteRegistration deletes a device's registration state, so that its next
// registration is an initial assignment.
func (c *Client) DeleteRegistration(ctx context.Context, registrationID, ifMatch string) error {
	_, err := c.do(ctx, http.MethodDelete, "/registrations/"+escape(registrationID), nil, etagHeader(ifMatch))
	return err
}

// QueryRegistrations returns one page of the registration states of a group.
func (c *Client) QueryRegistrations(ctx context.Context, groupID string, pageSize int, continuation string) ([]*store.Registration, string, error) {
	return query[*store.Registration](ctx, c, "/registrations/"+escape(groupID)+"/query", pageSize, continuation)
}

// EachRegistration calls fn for every registration state of a group, page by page.
func (c *Client) EachRegistration(ctx context.Context, groupID string, pageSize int, fn func(*store.Registration) error) error {
	return each(ctx, c, "/registrations/"+escape(groupID)+"/query", pageSize, fn)
}
