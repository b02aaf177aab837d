package etcd

// Backups of a prefix: etcd has no snapshot of a prefix (its own snapshot
// is the whole database), so Backup reads every key of the prefix at one
// revision, page by page, and writes them in a stream of its own; Restore
// writes such a stream into an empty prefix.
//
// The stream:
//
//	"dpsd-etcd-backup 1\n"
//	header: one JSON line {"prefix","revision","schema","time"}
//	records: 'k' uvarint(len key) key uvarint(len value) value   (key relative to the prefix)
//	trailer: 't' uvarint(number of records) SHA-256 of every byte before the trailer
//
// Records are the stored values, secrets still sealed with the store key
// (bound to kind and id, not to the prefix), so a backup restores under
// any prefix of a cluster with the same secrets. The expiry index (x/) is
// derived and rate-limit windows (w/) are not kept; operations and used
// challenges are, and are leased again on restore until their expiry.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tpmdps/dpsd/store"
)

// BackupMagic starts every backup stream of this engine.
const BackupMagic = "dpsd-etcd-backup 1\n"

// maxBackupValue bounds a value read from a backup (etcd's request limit).
const maxBackupValue = 2 << 20

// ErrBackup: a backup stream is cut, altered or not a backup of this engine.
var ErrBackup = errors.New("store: bad etcd backup")

// BackupHeader is the header line of a backup stream.
type BackupHeader struct {
	Prefix   string    `json:"prefix"`
	Revision int64     `json:"revision"`
	Schema   int       `json:"schema"`
	Time     time.Time `json:"time"`
}

// walkPage is how many keys one read of walk returns.
const walkPage = 500

// walk calls fn for every key of the prefix, in key order, as of one
// revision (the first read's; 0: now), and returns that revision. A
// compaction past it while walking is reported (rpctypes.ErrCompacted).
func (s *Store) walk(ctx context.Context, rev int64, fn func(kv *mvccpb.KeyValue) error) (int64, error) {
	from := s.prefix
	end := prefixEnd(s.prefix)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(walkPage),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, from, opts...)
		if err != nil {
			return rev, wrapErr(err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := fn(kv); err != nil {
				return rev, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// backedUp reports whether a key (relative) belongs in a backup.
func backedUp(rel string) bool {
	return !strings.HasPrefix(rel, pfxExpiry) && !strings.HasPrefix(rel, pfxWindow)
}

// Backup writes every key of the prefix as of one etcd revision to w (the
// stream above): a consistent copy while writers go on. Compaction of that
// revision during the copy fails it (rpctypes.ErrCompacted): run it again,
// or keep etcd's compaction retention longer than a backup takes.
func (s *Store) Backup(ctx context.Context, w io.Writer) (int64, error) {
	ctx, done, err := s.enterLong(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: backup: %w", err)
	}
	defer done()
	bw := newBackupWriter(w)
	// The revision is fixed by a first read so that the header can name it.
	resp, err := s.cli.Get(ctx, s.k(keySchema))
	if err != nil {
		return 0, fmt.Errorf("store: backup: %w", wrapErr(err))
	}
	rev := resp.Header.Revision
	hdr, _ := json.Marshal(BackupHeader{Prefix: s.prefix, Revision: rev, Schema: SchemaVersion, Time: s.now().UTC()})
	bw.write([]byte(BackupMagic))
	bw.write(append(hdr, '\n'))
	_, err = s.walk(ctx, rev, func(kv *mvccpb.KeyValue) error {
		if rel := s.rel(kv.Key); backedUp(rel) {
			bw.record(rel, kv.Value)
		}
		return bw.err
	})
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return bw.n, fmt.Errorf("store: backup of %s at revision %d: %w", s.prefix, rev, err)
	}
	if err := bw.finish(); err != nil {
		return bw.n, fmt.Errorf("store: backup: %w", err)
	}
	return bw.n, nil
}

// enterLong is enter without the per-request timeout, for calls that take
// as long as the data is large (Backup, Restore, Check); every etcd request
// in them still ends with ctx.
func (s *Store) enterLong(ctx context.Context) (context.Context, func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if err := s.gate.Enter(); err != nil {
		return nil, nil, err
	}
	return clientv3.WithRequireLeader(ctx), s.gate.Leave, nil
}

// backupWriter writes the stream and hashes it.
type backupWriter struct {
	w     io.Writer
	h     hash.Hash
	n     int64
	count uint64
	err   error
}

func newBackupWriter(w io.Writer) *backupWriter { return &backupWriter{w: w, h: sha256.New()} }

func (b *backupWriter) write(p []byte) {
	if b.err != nil {
		return
	}
	b.h.Write(p)
	n, err := b.w.Write(p)
	b.n += int64(n)
	b.err = err
}

func (b *backupWriter) record(key string, value []byte) {
	var buf []byte
	buf = append(buf, 'k')
	buf = binary.AppendUvarint(buf, uint64(len(key)))
	buf = append(buf, key...)
	buf = binary.AppendUvarint(buf, uint64(len(value)))
	b.write(buf)
	b.write(value)
	b.count++
}

func (b *backupWriter) finish() error {
	sum := b.h.Sum(nil)
	tr := binary.AppendUvarint([]byte{'t'}, b.count)
	if b.err != nil {
		return b.err
	}
	n, err := b.w.Write(append(tr, sum...))
	b.n += int64(n)
	return err
}

// ReadBackup reads a backup stream, calling fn for every record (key
// relative to the prefix), and returns its header and number of records.
// A stream that is cut, altered (its SHA-256 trailer) or has bytes after
// the trailer is ErrBackup; fn is called before the end is checked, so a
// caller that writes must check the error before trusting what it wrote.
func ReadBackup(r io.Reader, fn func(key string, value []byte) error) (BackupHeader, uint64, error) {
	hr := &hashReader{br: bufio.NewReaderSize(r, 64<<10), h: sha256.New()}
	var hdr BackupHeader
	magic := make([]byte, len(BackupMagic))
	if _, err := io.ReadFull(hr, magic); err != nil || string(magic) != BackupMagic {
		return hdr, 0, fmt.Errorf("%w: not an etcd engine backup", ErrBackup)
	}
	line, err := hr.line(4096)
	if err != nil || json.Unmarshal(line, &hdr) != nil || hdr.Prefix == "" || hdr.Schema < 1 {
		return hdr, 0, fmt.Errorf("%w: bad header", ErrBackup)
	}
	if hdr.Schema > SchemaVersion {
		return hdr, 0, fmt.Errorf("%w: schema version %d, this build supports up to %d", ErrSchema, hdr.Schema, SchemaVersion)
	}
	var count uint64
	for {
		tag, err := hr.br.ReadByte() // hashed below: the trailer's tag is not
		if err != nil {
			return hdr, count, fmt.Errorf("%w: cut after %d records", ErrBackup, count)
		}
		switch tag {
		case 'k':
			hr.h.Write([]byte{tag})
			key, err := readChunk(hr, store.MaxIDLength*2+128)
			if err != nil {
				return hdr, count, fmt.Errorf("%w: record %d: key: %w", ErrBackup, count, err)
			}
			val, err := readChunk(hr, maxBackupValue)
			if err != nil {
				return hdr, count, fmt.Errorf("%w: record %d: value: %w", ErrBackup, count, err)
			}
			if fn != nil {
				if err := fn(string(key), val); err != nil {
					return hdr, count, err
				}
			}
			count++
		case 't':
			want := hr.h.Sum(nil)
			n, err := binary.ReadUvarint(hr.br)
			if err != nil || n != count {
				return hdr, count, fmt.Errorf("%w: the trailer counts %d records, the stream holds %d", ErrBackup, n, count)
			}
			sum := make([]byte, sha256.Size)
			if _, err := io.ReadFull(hr.br, sum); err != nil {
				return hdr, count, fmt.Errorf("%w: cut trailer", ErrBackup)
			}
			if _, err := hr.br.ReadByte(); err != io.EOF {
				return hdr, count, fmt.Errorf("%w: bytes after the trailer", ErrBackup)
			}
			if !bytes.Equal(sum, want) {
				return hdr, count, fmt.Errorf("%w: SHA-256 does not match (altered or cut)", ErrBackup)
			}
			return hdr, count, nil
		default:
			return hdr, count, fmt.Errorf("%w: unknown tag 0x%02x after %d records", ErrBackup, tag, count)
		}
	}
}

// hashReader hashes every byte it hands out.
type hashReader struct {
	br *bufio.Reader
	h  hash.Hash
}

func (r *hashReader) Read(p []byte) (int, error) {
	n, err := r.br.Read(p)
	r.h.Write(p[:n])
	return n, err
}

func (r *hashReader) ReadByte() (byte, error) {
	b, err := r.br.ReadByte()
	if err == nil {
		r.h.Write([]byte{b})
	}
	return b, err
}

// line reads up to and including '\n', at most limit bytes.
func (r *hashReader) line(limit int) ([]byte, error) {
	var out []byte
	for len(out) < limit {
		b, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		out = append(out, b)
		if b == '\n' {
			return out, nil
		}
	}
	return nil, errors.New("line too long")
}

// readChunk reads uvarint(len) then len bytes, at most limit.
func readChunk(r *hashReader, limit uint64) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, fmt.Errorf("%d bytes, limit %d", n, limit)
	}
	b := make([]byte, n)
	_, err = io.ReadFull(r, b)
	return b, err
}
