package etcd

// What every record kind shares: ids and etags, the compare-and-swap write
// loop, the generic get, list and count.

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
)

// maxAttempts bounds the compare-and-swap retries of one unconditional
// write that keeps losing to other writers of the same key.
const maxAttempts = 64

// errContended: a write lost its compare-and-swap maxAttempts times.
var errContended = errors.New("store: write contended too long")

// etagOf is the etag of a record written at mod revision rev: the revision
// in decimal. Revisions only grow, so an etag never repeats, also across a
// delete and re-create.
func etagOf(rev int64) string { return strconv.FormatInt(rev, 10) }

// casPlan is what one attempt of a write does given the stored value.
type casPlan struct {
	ops  []clientv3.Op
	cmps []clientv3.Cmp // besides the record's own revision
}

// casWrite writes the record at rel (relative key) under ifMatch with a
// compare-and-swap on its mod revision: it reads the stored record, lets
// plan build the writes for it (plan may refuse with an outcome error:
// not found, limit), and commits them only if the record (and whatever
// plan compares) is unchanged; otherwise it tries again with the value
// the failed compare returned. A specific etag that no longer matches is
// store.ErrPreconditionFailed. It returns the revision of the write and
// the value it replaced (nil if none).
func (s *Store) casWrite(ctx context.Context, rel, ifMatch string, plan func(old *mvccpb.KeyValue) (casPlan, error)) (int64, *mvccpb.KeyValue, error) {
	key := s.k(rel)
	m := record.ETag(ifMatch)
	specific := m != "" && m != "*"
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return 0, nil, wrapErr(err)
	}
	var old *mvccpb.KeyValue
	if len(resp.Kvs) == 1 {
		old = resp.Kvs[0]
	}
	for range maxAttempts {
		if specific && (old == nil || etagOf(old.ModRevision) != m) {
			if old == nil {
				return 0, nil, fmt.Errorf("%w: %s does not exist", store.ErrPreconditionFailed, rel)
			}
			return 0, nil, fmt.Errorf("%w: %s has another etag", store.ErrPreconditionFailed, rel)
		}
		p, err := plan(old)
		if err != nil {
			return 0, nil, err
		}
		cmp := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
		if old != nil {
			cmp = clientv3.Compare(clientv3.ModRevision(key), "=", old.ModRevision)
		}
		tr, err := s.cli.Txn(ctx).If(append([]clientv3.Cmp{cmp}, p.cmps...)...).Then(p.ops...).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			return 0, nil, wrapErr(err)
		}
		if tr.Succeeded {
			return tr.Header.Revision, old, nil
		}
		old = nil
		if kvs := tr.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
			old = kvs[0]
		}
	}
	return 0, nil, fmt.Errorf("%w: %s: %w", store.ErrUnavailable, rel, errContended)
}

// getRecord reads and decodes the record at pfx+id: store.ErrNotFound when
// it is absent or id is not a valid id.
func getRecord[T any](ctx context.Context, s *Store, what, pfx, idField, id string, decode func(id string, kv *mvccpb.KeyValue) (T, error)) (T, error) {
	var out T
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return out, fmt.Errorf("store: get %s: %w", what, err)
	}
	defer done()
	key, err := record.Key(idField, id)
	if err != nil {
		return out, fmt.Errorf("%w: %w", store.ErrNotFound, err)
	}
	resp, err := s.cli.Get(ctx, s.k(pfx+key))
	if err != nil {
		return out, fmt.Errorf("store: get %s: %w", what, wrapErr(err))
	}
	if len(resp.Kvs) == 0 {
		return out, fmt.Errorf("%w: %s %q", store.ErrNotFound, what, id)
	}
	return decode(key, resp.Kvs[0])
}

// pageSize is the page size a Query asks for.
func pageSize(q store.Query) int64 {
	switch {
	case q.MaxItems <= 0:
		return store.DefaultMaxItems
	case q.MaxItems > store.MaxMaxItems:
		return store.MaxMaxItems
	}
	return int64(q.MaxItems)
}

// listKeys returns one page of the keys starting with pfx (relative), in
// key order, after the key named by q.Continuation, and the token of the
// next page ("" when nothing follows at the revision read). Tokens are
// base64url(kind || last relative key): a token of another listing or
// another prefix is refused. keysOnly drops the values.
func (s *Store) listKeys(ctx context.Context, kind byte, pfx string, q store.Query, keysOnly bool, rev int64) ([]*mvccpb.KeyValue, string, int64, error) {
	from := pfx
	if q.Continuation != "" {
		raw, err := base64.RawURLEncoding.DecodeString(q.Continuation)
		if err != nil || len(raw) < 2 || raw[0] != kind || !bytes.HasPrefix(raw[1:], []byte(pfx)) || len(raw) == 1+len(pfx) {
			return nil, "", 0, fmt.Errorf("%w: %.40q", store.ErrBadContinuation, q.Continuation)
		}
		from = string(raw[1:]) + "\x00" // the next key after the last one returned
	}
	max := pageSize(q)
	opts := []clientv3.OpOption{clientv3.WithRange(s.k(prefixEnd(pfx))), clientv3.WithLimit(max),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
	if keysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := s.cli.Get(ctx, s.k(from), opts...)
	if err != nil {
		return nil, "", 0, wrapErr(err)
	}
	tok := ""
	if resp.More && len(resp.Kvs) > 0 {
		last := s.rel(resp.Kvs[len(resp.Kvs)-1].Key)
		tok = base64.RawURLEncoding.EncodeToString(append([]byte{kind}, last...))
	}
	return resp.Kvs, tok, resp.Header.Revision, nil
}

// listRecords returns one page of the records under pfx, decoded.
func listRecords[T any](ctx context.Context, s *Store, what string, kind byte, pfx string, q store.Query, decode func(id string, kv *mvccpb.KeyValue) (T, error)) (store.Page[T], error) {
	var page store.Page[T]
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return page, fmt.Errorf("store: list %s: %w", what, err)
	}
	defer done()
	kvs, tok, _, err := s.listKeys(ctx, kind, pfx, q, false, 0)
	if err != nil {
		return page, fmt.Errorf("store: list %s: %w", what, err)
	}
	for _, kv := range kvs {
		item, err := decode(strings.TrimPrefix(s.rel(kv.Key), pfx), kv)
		if err != nil {
			return store.Page[T]{}, fmt.Errorf("store: list %s: %w", what, err)
		}
		page.Items = append(page.Items, item)
	}
	page.Continuation = tok
	return page, nil
}

// count returns the number of keys under pfx (relative): etcd counts them
// in its in-memory key index without reading a value, so a count costs one
// request whatever the number, and no counter key is written (which every
// registration would contend for).
func (s *Store) count(ctx context.Context, what, pfx string) (int, error) {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: count %s: %w", what, err)
	}
	defer done()
	resp, err := s.cli.Get(ctx, s.k(pfx), clientv3.WithRange(s.k(prefixEnd(pfx))), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("store: count %s: %w", what, wrapErr(err))
	}
	return int(resp.Count), nil
}

// deleteRecord deletes pfx+id under ifMatch; extra adds writes of the same
// transaction given the stored value (index entries).
func (s *Store) deleteRecord(ctx context.Context, what, pfx, idField, id, ifMatch string, extra func(ctx context.Context, key string, old *mvccpb.KeyValue) (casPlan, error)) error {
	ctx, done, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("store: delete %s: %w", what, err)
	}
	defer done()
	key, err := record.Key(idField, id)
	if err != nil {
		return fmt.Errorf("store: delete %s: %w: %w", what, store.ErrNotFound, err)
	}
	// A delete of a missing record is ErrNotFound whatever the etag.
	_, _, err = s.casWrite(ctx, pfx+key, notFoundFirst(ifMatch), func(old *mvccpb.KeyValue) (casPlan, error) {
		if old == nil {
			return casPlan{}, fmt.Errorf("%w: %s %q", store.ErrNotFound, what, id)
		}
		if m := record.ETag(ifMatch); m != "" && m != "*" && etagOf(old.ModRevision) != m {
			return casPlan{}, fmt.Errorf("%w: %s %q has another etag", store.ErrPreconditionFailed, what, id)
		}
		p := casPlan{}
		if extra != nil {
			var err error
			if p, err = extra(ctx, key, old); err != nil {
				return casPlan{}, err
			}
		}
		p.ops = append(p.ops, clientv3.OpDelete(s.k(pfx+key)))
		return p, nil
	})
	if err != nil {
		return fmt.Errorf("store: delete %s: %w", what, err)
	}
	return nil
}

// notFoundFirst makes casWrite leave the etag check to the plan, so that a
// missing record is ErrNotFound before any etag is compared.
func notFoundFirst(string) string { return "" }
