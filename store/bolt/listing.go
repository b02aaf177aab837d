package bolt

// Paging of listings: continuation tokens and page bounds.

import (
	"bytes"
	"encoding/base64"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
)

// listBucket visits up to q.MaxItems entries of b whose keys start with
// prefix, after the key named by q.Continuation, and returns the token of
// the next page ("" when none is left). Tokens are base64url(kind || last
// key): a token of another listing or another prefix is refused.
func listBucket(b *bbolt.Bucket, kind byte, prefix []byte, q store.Query, visit func(k, v []byte) error) (string, error) {
	max := q.MaxItems
	if max <= 0 {
		max = store.DefaultMaxItems
	}
	if max > store.MaxMaxItems {
		max = store.MaxMaxItems
	}
	c := b.Cursor()
	var k, v []byte
	if q.Continuation != "" {
		raw, err := base64.RawURLEncoding.DecodeString(q.Continuation)
		if err != nil || len(raw) < 2 || raw[0] != kind || !bytes.HasPrefix(raw[1:], prefix) || len(raw) == 1+len(prefix) {
			return "", fmt.Errorf("%w: %.40q", store.ErrBadContinuation, q.Continuation)
		}
		last := raw[1:]
		k, v = c.Seek(last)
		if k != nil && bytes.Equal(k, last) {
			k, v = c.Next()
		}
	} else if prefix != nil {
		k, v = c.Seek(prefix)
	} else {
		k, v = c.First()
	}
	var last []byte
	for n := 0; k != nil && bytes.HasPrefix(k, prefix); n++ {
		if n == max {
			tok := append([]byte{kind}, last...)
			return base64.RawURLEncoding.EncodeToString(tok), nil
		}
		if err := visit(k, v); err != nil {
			return "", err
		}
		last = k
		k, v = c.Next()
	}
	return "", nil
}
