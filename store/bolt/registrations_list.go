package bolt

// Every registration record, in or out of a group (store.RegistrationLister):
// what dpsd store copy reads to move an installation to another engine.

import (
	"context"

	"github.com/tpmdps/dpsd/store"
)

var _ store.RegistrationLister = (*Store)(nil)

// ListRegistrations returns one page of every registration record, in key
// order (continuation kind 'a').
func (s *Store) ListRegistrations(ctx context.Context, q store.Query) (store.Page[*store.Registration], error) {
	return listRecords(ctx, s, "registrations", bktRegistrations, 'a', q, s.decodeRegistration)
}

// CountRegistrations returns the number of registration records (a stored counter).
func (s *Store) CountRegistrations(ctx context.Context) (int, error) {
	return s.count(ctx, bktCounts, bktRegistrations)
}
