package etcd

// What several nodes on one store share beyond the records: the single use
// of TPM challenges (store.ChallengeRecorder) and rate-limit windows
// counted for the whole cluster (store.WindowCounter).

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tpmdps/dpsd/store"
)

// maxChallengeID bounds the id of a challenge (its reference's bytes).
const maxChallengeID = 64

// UseChallenge records that the TPM challenge id authenticated: one
// compare-and-swap that creates c/<hex id> if it does not exist, leased
// until after expires. A second use, from any node, is
// store.ErrChallengeUsed.
func (s *Store) UseChallenge(ctx context.Context, id []byte, expires time.Time) error {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: use challenge: %w", err)
	}
	defer done()
	if len(id) == 0 || len(id) > maxChallengeID {
		return fmt.Errorf("store: use challenge: %w: id of %d bytes", store.ErrInvalidID, len(id))
	}
	key := s.k(pfxUsed + hex.EncodeToString(id))
	for attempt := 0; ; attempt++ {
		lease, err := s.leases.get(ctx, expires)
		if err != nil {
			return fmt.Errorf("store: use challenge: %w", err)
		}
		tr, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, strconv.FormatInt(expires.Unix(), 10), clientv3.WithLease(lease))).Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt < 3 {
			s.leases.drop(lease)
			continue
		}
		if err != nil {
			return fmt.Errorf("store: use challenge: %w", wrapErr(err))
		}
		if !tr.Succeeded {
			return store.ErrChallengeUsed
		}
		return nil
	}
}

// CountInWindow adds one to the counter of name in the current window (the
// store's clock divided into windows of length window since the Unix
// epoch) and returns the count, this one included, and the window's end.
// The counter is the version of w/<name>/<window>: one Put that returns the
// previous version, so concurrent nodes never lose a count and no
// compare-and-swap is retried. The key is leased past the window's end.
func (s *Store) CountInWindow(ctx context.Context, name string, window time.Duration) (int64, time.Time, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("store: count in window: %w", err)
	}
	defer done()
	if window <= 0 || name == "" || len(name) > 2*store.MaxIDLength || strings.IndexByte(name, 0) >= 0 {
		return 0, time.Time{}, fmt.Errorf("store: count in window: %w: name %.40q, window %s", store.ErrInvalidID, name, window)
	}
	n := s.now().UnixNano() / int64(window)
	end := time.Unix(0, (n+1)*int64(window))
	key := s.k(pfxWindow + name + "/" + strconv.FormatInt(n, 10))
	for attempt := 0; ; attempt++ {
		lease, err := s.leases.get(ctx, end)
		if err != nil {
			return 0, time.Time{}, fmt.Errorf("store: count in window: %w", err)
		}
		resp, err := s.cli.Put(ctx, key, "", clientv3.WithLease(lease), clientv3.WithPrevKV())
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt < 3 {
			s.leases.drop(lease)
			continue
		}
		if err != nil {
			return 0, time.Time{}, fmt.Errorf("store: count in window: %w", wrapErr(err))
		}
		if resp.PrevKv == nil {
			return 1, end, nil
		}
		return resp.PrevKv.Version + 1, end, nil
	}
}
