package etcd

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzReadBackup: ReadBackup never panics on any stream, and whatever it
// accepts was written by backupWriter: re-encoding its records gives the
// same bytes.
func FuzzReadBackup(f *testing.F) {
	var good bytes.Buffer
	bw := newBackupWriter(&good)
	hdr, _ := json.Marshal(BackupHeader{Prefix: "/dpsd/", Revision: 7, Schema: SchemaVersion})
	bw.write([]byte(BackupMagic))
	bw.write(append(hdr, '\n'))
	bw.record("meta/schema", []byte("1"))
	bw.record("e/dev", []byte(`{"registrationId":"dev"}`))
	if err := bw.finish(); err != nil {
		f.Fatal(err)
	}
	f.Add(good.Bytes())
	f.Add([]byte(BackupMagic))
	f.Add(good.Bytes()[:len(good.Bytes())-5])
	f.Fuzz(func(t *testing.T, data []byte) {
		type rec struct {
			k string
			v []byte
		}
		var recs []rec
		h, n, err := ReadBackup(bytes.NewReader(data), func(k string, v []byte) error {
			recs = append(recs, rec{k, v})
			return nil
		})
		if err != nil {
			return
		}
		if n != uint64(len(recs)) {
			t.Fatalf("%d records counted, %d seen", n, len(recs))
		}
		var again bytes.Buffer
		w := newBackupWriter(&again)
		w.write([]byte(BackupMagic))
		line := data[len(BackupMagic) : len(BackupMagic)+bytes.IndexByte(data[len(BackupMagic):], '\n')+1]
		w.write(line)
		for _, r := range recs {
			w.record(r.k, r.v)
		}
		if err := w.finish(); err != nil || !bytes.Equal(again.Bytes(), data) {
			t.Fatalf("accepted a stream backupWriter does not write (header %+v)", h)
		}
	})
}
