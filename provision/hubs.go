package provision

// Linked hubs in memory. Every registration allocates among the hubs the
// service knows, so the linked hubs (store.LinkedHub records, managed
// through the service API) are kept as a snapshot tagged with the store's
// linked hubs revision, as the enrollment groups are (groups.go): each
// registration reads the revision (one key) and a changed one rebuilds the
// snapshot first, also when another process wrote the hubs. The snapshot
// holds each hub's hand-off connector (hubconn), built from its record;
// building one does no I/O.
//
// How the service-wide hubs of Config.Hubs (dpsd's --hubs) combine with
// the linked hubs: the hubs a registration is hashed across, when its
// enrollment names none, are every linked hub that takes part in
// allocation (weight as recorded) and every hub of Config.Hubs that is not
// also linked (weight 1, no hand-off: allocation only). A hub in both
// takes the linked record's weight, flag and connector. Config.Hubs marked
// PlaceholderHubs (dpsd's default placeholder) count only while no hub
// is linked.

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/hubconn"
	"github.com/tpmdps/dpsd/store"
)

// linkedHub is one linked hub of a snapshot, with its connector.
type linkedHub struct {
	rec *store.LinkedHub
	// conn is the hub's hand-off connector; nil when the hub has none
	// (or the service was given no connector factory).
	conn hubconn.Connector
	// connErr says why the hub's record gives no usable connector.
	connErr error
}

// hubSnapshot is the linked hubs of one store revision. Immutable.
type hubSnapshot struct {
	rev    uint64
	byName map[string]*linkedHub // lowercased name
	// pool is the service-wide allocation pool: linked hubs that take part
	// in allocation, then Config.Hubs not linked (see above).
	pool []allocator.Hub
}

// hubCache holds the current snapshot, as groupCache does.
type hubCache struct {
	cur     atomic.Pointer[hubSnapshot]
	rebuild sync.Mutex
}

// hub returns the linked hub of name, nil when the hub is not linked.
func (snap *hubSnapshot) hub(name string) *linkedHub {
	return snap.byName[strings.ToLower(name)]
}

// connector returns the hand-off connector of hub: nil when the hub has
// none (not linked, or linked for allocation only), an error when its
// record cannot give one.
func (snap *hubSnapshot) connector(name string) (hubconn.Connector, error) {
	h := snap.hub(name)
	if h == nil {
		return nil, nil
	}
	return h.conn, h.connErr
}

// hasHandoff reports whether a hub needs the outbox: it has a connector,
// or its record should have given one.
func (snap *hubSnapshot) hasHandoff(name string) bool {
	h := snap.hub(name)
	return h != nil && (h.conn != nil || h.connErr != nil)
}

// weight returns a hub's allocation weight (1 for hubs not linked) and
// whether it takes part in hashed allocation.
func (snap *hubSnapshot) weight(name string) (int, bool) {
	if h := snap.hub(name); h != nil {
		return h.rec.Weight(), h.rec.Allocates()
	}
	return store.DefaultAllocationWeight, true
}

// linkedHubs returns the snapshot of the store's current linked hubs
// revision, rebuilding it first when the revision moved.
func (s *Service) linkedHubs(ctx context.Context) (*hubSnapshot, error) {
	rev, err := s.cfg.Store.LinkedHubsRevision(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the linked hubs revision: %w", err)
	}
	if snap := s.hubCache.cur.Load(); snap != nil && snap.rev == rev {
		return snap, nil
	}
	s.hubCache.rebuild.Lock()
	defer s.hubCache.rebuild.Unlock()
	if rev, err = s.cfg.Store.LinkedHubsRevision(ctx); err != nil {
		return nil, fmt.Errorf("read the linked hubs revision: %w", err)
	}
	if snap := s.hubCache.cur.Load(); snap != nil && snap.rev == rev {
		return snap, nil
	}
	hubs, err := s.cfg.Store.ListLinkedHubs(ctx)
	if err != nil {
		return nil, fmt.Errorf("list linked hubs: %w", err)
	}
	snap := s.buildHubSnapshot(ctx, rev, hubs)
	s.hubCache.cur.Store(snap)
	s.log.LogAttrs(ctx, slog.LevelDebug, "linked hubs loaded", slog.Uint64("revision", rev), slog.Int("hubs", len(hubs)))
	return snap, nil
}

// buildHubSnapshot prepares the hubs of one revision.
func (s *Service) buildHubSnapshot(ctx context.Context, rev uint64, hubs []*store.LinkedHub) *hubSnapshot {
	snap := &hubSnapshot{rev: rev, byName: make(map[string]*linkedHub, len(hubs))}
	for _, rec := range hubs {
		h := &linkedHub{rec: rec}
		if s.cfg.Connectors != nil {
			h.conn, h.connErr = s.cfg.Connectors.For(rec)
			if h.connErr != nil {
				s.log.LogAttrs(ctx, slog.LevelWarn, "linked hub has no usable connector: devices assigned to it fail",
					slog.String("hub", rec.Name), slog.String("error", h.connErr.Error()))
			}
		}
		snap.byName[strings.ToLower(rec.Name)] = h
		if rec.Allocates() {
			snap.pool = append(snap.pool, allocator.Hub{Name: rec.Name, Weight: rec.Weight()})
		}
	}
	if len(hubs) == 0 || !s.cfg.PlaceholderHubs {
		for _, name := range s.cfg.Hubs {
			if snap.hub(name) == nil {
				snap.pool = append(snap.pool, allocator.Hub{Name: name, Weight: store.DefaultAllocationWeight})
			}
		}
	}
	return snap
}
