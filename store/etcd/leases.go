package etcd

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Leases of expiring keys (operations, used challenges, rate-limit
// windows) are shared per minute of expiry: a key that must live until t
// is attached to the lease of t's minute, which ends leaseMargin after that
// minute. So a node grants about one lease a minute, not one per key (a
// grant is a write through raft), and etcd deletes expired keys by itself.
// A lease only bounds how long a key is kept: expiry is always decided by
// the time stored with the key, since a leader change renews leases.
const (
	leaseBucket = time.Minute
	leaseMargin = 5 * time.Minute
)

// leaseCache holds this node's lease of each expiry minute.
type leaseCache struct {
	s  *Store
	mu sync.Mutex
	m  map[int64]clientv3.LeaseID // end of the minute, Unix seconds -> lease
}

func (c *leaseCache) init(s *Store) {
	c.s = s
	c.m = make(map[int64]clientv3.LeaseID)
}

// get returns a lease that lasts at least until expires (by the store's clock).
func (c *leaseCache) get(ctx context.Context, expires time.Time) (clientv3.LeaseID, error) {
	now := c.s.now()
	end := expires.Truncate(leaseBucket).Add(leaseBucket)
	c.mu.Lock()
	defer c.mu.Unlock()
	if id, ok := c.m[end.Unix()]; ok {
		return id, nil
	}
	ttl := max(end.Sub(now), 0) + leaseMargin
	resp, err := c.s.cli.Grant(ctx, int64(ttl/time.Second)+1)
	if err != nil {
		return 0, fmt.Errorf("lease until %s: %w", end.Format(time.RFC3339), wrapErr(err))
	}
	for k := range c.m {
		if time.Unix(k, 0).Before(now.Add(-leaseBucket)) {
			delete(c.m, k)
		}
	}
	c.m[end.Unix()] = resp.ID
	return resp.ID, nil
}

// drop forgets a lease etcd no longer knows (it expired or was revoked).
func (c *leaseCache) drop(id clientv3.LeaseID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, v := range c.m {
		if v == id {
			delete(c.m, k)
		}
	}
}
