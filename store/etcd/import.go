package etcd

import (
	"context"

	"github.com/tpmdps/dpsd/store"
)

// Importing records from another store (dpsd store copy): each record is
// written as the source stored it, its creation and update times kept
// (the write time is not used) and its secrets sealed again with this
// store's key; it gets a new etag. The group limit does not apply to an
// import: the source already held those groups.

// ImportEnrollment writes e with its own times.
func (s *Store) ImportEnrollment(ctx context.Context, e *store.Enrollment) error {
	_, err := s.putEnrollment(ctx, e, "", true)
	return err
}

// ImportGroup writes g with its own times.
func (s *Store) ImportGroup(ctx context.Context, g *store.Group) error {
	_, err := s.putGroup(ctx, g, "", true)
	return err
}

// ImportRegistration writes r (hub key and attestation hash included)
// with its own times.
func (s *Store) ImportRegistration(ctx context.Context, r *store.Registration) error {
	_, err := s.recordRegistration(ctx, r, nil, true, nil)
	return err
}

// IsEmpty reports whether the prefix holds no enrollment, group or
// registration (only its schema and key check, or nothing).
func (s *Store) IsEmpty(ctx context.Context) (bool, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return false, err
	}
	defer done()
	if err := s.mustBeEmpty(ctx); err != nil {
		if isNotEmpty(err) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}
