package etcd

// Linked IoT hubs (h/<lower name>: the connection string and the webhook
// secret sealed) and meta/hubs, written with every linked hub write, whose
// mod revision is LinkedHubsRevision.

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

func (s *Store) decodeLinkedHub(id string, kv *mvccpb.KeyValue) (*store.LinkedHub, error) {
	rec := record.LinkedHub{LinkedHub: &store.LinkedHub{}}
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", store.ErrCorrupt, s.rel(kv.Key), err)
	}
	if rec.Sealed != nil {
		pt, err := s.sealer.Open([]byte(bktLinkedHubs), []byte(id), rec.Sealed)
		if err != nil {
			return nil, err
		}
		var sec record.HubSecrets
		if err := json.Unmarshal(pt, &sec); err != nil {
			return nil, fmt.Errorf("%w: %s: sealed secrets: %w", store.ErrCorrupt, s.rel(kv.Key), err)
		}
		rec.ConnectionString = sec.ConnectionString
		if rec.Webhook != nil {
			rec.Webhook.Secret = sec.WebhookSecret
		}
	}
	rec.LinkedHub.ETag = etagOf(kv.ModRevision)
	return rec.LinkedHub, nil
}

// GetLinkedHub returns the linked hub (secrets opened) or ErrNotFound.
func (s *Store) GetLinkedHub(ctx context.Context, name string) (*store.LinkedHub, error) {
	return getRecord(ctx, s, "linked hub", pfxHub, "name", name, s.decodeLinkedHub)
}

// PutLinkedHub creates or replaces a linked hub (see store.Store for
// ifMatch); meta/hubs is written in the same transaction.
func (s *Store) PutLinkedHub(ctx context.Context, h *store.LinkedHub, ifMatch string) (*store.LinkedHub, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: put linked hub: %w", err)
	}
	defer done()
	if h == nil {
		return nil, fmt.Errorf("store: put linked hub: %w: nil linked hub", store.ErrInvalidRecord)
	}
	key, err := record.Key("name", h.Name)
	if err != nil {
		return nil, fmt.Errorf("store: put linked hub: %w", err)
	}
	out, stored, secrets, err := record.SplitLinkedHub(h)
	if err != nil {
		return nil, fmt.Errorf("store: put linked hub %q: %w", h.Name, err)
	}
	var sealed []byte
	if secrets != nil {
		sealed = s.sealer.Seal([]byte(bktLinkedHubs), []byte(key), secrets)
	}
	now := s.now().UTC()
	rel := pfxHub + key
	rev, _, err := s.casWrite(ctx, rel, ifMatch, func(old *mvccpb.KeyValue) (casPlan, error) {
		created := now
		if old != nil {
			h, err := head(rel, old.Value)
			if err != nil {
				return casPlan{}, err
			}
			if !h.CreatedAt.IsZero() {
				created = h.CreatedAt
			}
		}
		stored.CreatedAt, stored.UpdatedAt = created, now
		out.CreatedAt, out.UpdatedAt = created, now
		data, err := json.Marshal(record.LinkedHub{LinkedHub: stored, Sealed: sealed})
		if err != nil {
			return casPlan{}, fmt.Errorf("%w: linked hub %q: %w", store.ErrInvalidRecord, key, err)
		}
		return casPlan{ops: []clientv3.Op{
			clientv3.OpPut(s.k(rel), string(data)),
			clientv3.OpPut(s.k(keyHubs), ""),
		}}, nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: put linked hub: %w", err)
	}
	out.ETag = etagOf(rev)
	return out, nil
}

// DeleteLinkedHub deletes a linked hub (meta/hubs written in the same
// transaction). Registrations assigned to it keep their hub.
func (s *Store) DeleteLinkedHub(ctx context.Context, name, ifMatch string) error {
	return s.deleteRecord(ctx, "linked hub", pfxHub, "name", name, ifMatch, func(context.Context, string, *mvccpb.KeyValue) (casPlan, error) {
		return casPlan{ops: []clientv3.Op{clientv3.OpPut(s.k(keyHubs), "")}}, nil
	})
}

// ListLinkedHubs returns every linked hub in key order, secrets opened, read
// at one revision.
func (s *Store) ListLinkedHubs(ctx context.Context) ([]*store.LinkedHub, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: list linked hubs: %w", err)
	}
	defer done()
	resp, err := s.cli.Get(ctx, s.k(pfxHub), clientv3.WithRange(s.k(prefixEnd(pfxHub))),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("store: list linked hubs: %w", wrapErr(err))
	}
	out := make([]*store.LinkedHub, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		h, err := s.decodeLinkedHub(strings.TrimPrefix(s.rel(kv.Key), pfxHub), kv)
		if err != nil {
			return nil, fmt.Errorf("store: list linked hubs: %w", err)
		}
		out = append(out, h)
	}
	return out, nil
}

// LinkedHubsRevision returns the mod revision of meta/hubs: 0 before the
// first linked hub write of this prefix, then the etcd revision of the
// latest PutLinkedHub or DeleteLinkedHub. One read of one key.
func (s *Store) LinkedHubsRevision(ctx context.Context) (uint64, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: linked hubs revision: %w", err)
	}
	defer done()
	resp, err := s.cli.Get(ctx, s.k(keyHubs), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("store: linked hubs revision: %w", wrapErr(err))
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return uint64(resp.Kvs[0].ModRevision), nil
}
