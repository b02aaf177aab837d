package bolt

// Linked IoT hubs: bucket linkedhubs, keyed by lower(name), connection
// string and webhook secret sealed; meta/hubsrev, bumped with every write.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

func (s *Store) decodeLinkedHub(key, v []byte) (*store.LinkedHub, error) {
	rec := record.LinkedHub{LinkedHub: &store.LinkedHub{}}
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("%w: %s/%q: %w", store.ErrCorrupt, bktLinkedHubs, key, err)
	}
	if rec.Sealed != nil {
		pt, err := s.open([]byte(bktLinkedHubs), key, rec.Sealed)
		if err != nil {
			return nil, err
		}
		var sec record.HubSecrets
		if err := json.Unmarshal(pt, &sec); err != nil {
			return nil, fmt.Errorf("%w: %s/%q: sealed secrets: %w", store.ErrCorrupt, bktLinkedHubs, key, err)
		}
		rec.ConnectionString = sec.ConnectionString
		if rec.Webhook != nil {
			rec.Webhook.Secret = sec.WebhookSecret
		}
	}
	return rec.LinkedHub, nil
}

// GetLinkedHub returns the linked hub or ErrNotFound.
func (s *Store) GetLinkedHub(ctx context.Context, name string) (*store.LinkedHub, error) {
	return getRecord(ctx, s, "linked hub", bktLinkedHubs, "name", name, s.decodeLinkedHub)
}

// PutLinkedHub creates or replaces a linked hub (see Store for ifMatch).
func (s *Store) PutLinkedHub(ctx context.Context, h *store.LinkedHub, ifMatch string) (*store.LinkedHub, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: put linked hub: %w", err)
	}
	defer done()
	if h == nil {
		return nil, fmt.Errorf("store: put linked hub: %w: nil linked hub", store.ErrInvalidRecord)
	}
	key, err := normKey("name", h.Name)
	if err != nil {
		return nil, fmt.Errorf("store: put linked hub: %w", err)
	}
	out, stored, secrets, err := record.SplitLinkedHub(h)
	if err != nil {
		return nil, fmt.Errorf("store: put linked hub %q: %w", h.Name, err)
	}
	var sealed []byte
	if secrets != nil {
		sealed = s.seal([]byte(bktLinkedHubs), key, secrets)
	}
	etag, now := newETag(), s.now().UTC()
	err = s.batch(func(tx *bbolt.Tx) error {
		err := putRecordTx(tx, bktLinkedHubs, key, ifMatch, now, func(created time.Time) ([]byte, error) {
			stored.ETag, stored.CreatedAt, stored.UpdatedAt = etag, created, now
			out.ETag, out.CreatedAt, out.UpdatedAt = etag, created, now
			return json.Marshal(record.LinkedHub{LinkedHub: stored, Sealed: sealed})
		})
		if err != nil {
			return err
		}
		return bumpRevision(tx, metaHubsRev)
	})
	if err != nil {
		return nil, fmt.Errorf("store: put linked hub: %w", err)
	}
	return out, nil
}

// DeleteLinkedHub deletes a linked hub. Registrations assigned to it keep
// their hub.
func (s *Store) DeleteLinkedHub(ctx context.Context, name, ifMatch string) error {
	done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: delete linked hub: %w", err)
	}
	defer done()
	err = s.deleteRecord(bktLinkedHubs, "name", name, ifMatch, func(tx *bbolt.Tx, _, _ []byte, _ recordHead) error {
		return bumpRevision(tx, metaHubsRev)
	})
	if err != nil {
		return fmt.Errorf("store: delete linked hub: %w", err)
	}
	return nil
}

// ListLinkedHubs returns every linked hub, in key order, secrets opened.
func (s *Store) ListLinkedHubs(ctx context.Context) ([]*store.LinkedHub, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: list linked hubs: %w", err)
	}
	defer done()
	var out []*store.LinkedHub
	err = s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bktLinkedHubs)).ForEach(func(k, v []byte) error {
			h, err := s.decodeLinkedHub(bytes.Clone(k), v)
			if err != nil {
				return err
			}
			out = append(out, h)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store: list linked hubs: %w", err)
	}
	return out, nil
}

// LinkedHubsRevision returns meta/hubsrev: 0 until the first linked hub
// write of this file, then one more with every PutLinkedHub and
// DeleteLinkedHub.
func (s *Store) LinkedHubsRevision(ctx context.Context) (uint64, error) {
	return s.readRevision(ctx, "linked hubs revision", metaHubsRev)
}

// bumpRevision adds one to the revision counter meta/name inside a write.
func bumpRevision(tx *bbolt.Tx, name string) error {
	meta := tx.Bucket([]byte(bktMeta))
	var rev uint64
	if v := meta.Get([]byte(name)); len(v) == 8 {
		rev = binary.BigEndian.Uint64(v)
	}
	return meta.Put([]byte(name), u64(rev+1))
}

// readRevision reads the revision counter meta/name (0 when absent); what
// names it in errors.
func (s *Store) readRevision(ctx context.Context, what, name string) (uint64, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: %s: %w", what, err)
	}
	defer done()
	var rev uint64
	err = s.db.View(func(tx *bbolt.Tx) error {
		switch v := tx.Bucket([]byte(bktMeta)).Get([]byte(name)); len(v) {
		case 0:
		case 8:
			rev = binary.BigEndian.Uint64(v)
		default:
			return fmt.Errorf("%w: %s/%s is %d bytes, want 8", store.ErrCorrupt, bktMeta, name, len(v))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: %s: %w", what, err)
	}
	return rev, nil
}
