package apiclient

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/bolt"
)

func TestClientBackup(t *testing.T) {
	srv, st, owner, reader := server(t)
	c := newClient(t, srv, owner)
	ctx := t.Context()
	if _, err := c.PutEnrollment(ctx, &store.Enrollment{RegistrationID: "backed-up", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey}}}, ""); err != nil {
		t.Fatal(err)
	}

	var buf bytes.Buffer
	n, err := c.Backup(ctx, &buf)
	if err != nil || n != int64(buf.Len()) || n == 0 {
		t.Fatalf("Backup: n=%d len=%d err=%v", n, buf.Len(), err)
	}
	path := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	cp, err := bolt.Open(path, bolt.Options{Timeout: 5 * time.Second, KeyFile: st.KeyFile()})
	if err != nil {
		t.Fatalf("open the copy: %v", err)
	}
	defer cp.Close()
	if e, err := cp.GetEnrollment(ctx, "backed-up"); err != nil || e.RegistrationID != "backed-up" {
		t.Fatalf("enrollment in the copy: %+v %v", e, err)
	}

	// The read right is not enough: a backup holds every enrollment.
	buf.Reset()
	var ae *APIError
	if _, err := newClient(t, srv, reader).Backup(ctx, &buf); !errors.As(err, &ae) || ae.Status != http.StatusForbidden || ae.ErrorCode != 403001 || buf.Len() != 0 {
		t.Fatalf("reader Backup: err=%v, %d bytes written", err, buf.Len())
	}
}

func TestClientBackupIncomplete(t *testing.T) {
	for name, h := range map[string]http.HandlerFunc{
		"no trailers": func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte("some bytes"))
		},
		"wrong size": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", wire.BackupSizeTrailer+", "+wire.BackupSHA256Trailer)
			w.Write([]byte("abc"))
			w.Header().Set(wire.BackupSizeTrailer, "4")
			w.Header().Set(wire.BackupSHA256Trailer, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
		},
		"wrong sum": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", wire.BackupSizeTrailer+", "+wire.BackupSHA256Trailer)
			w.Write([]byte("abd"))
			w.Header().Set(wire.BackupSizeTrailer, "3")
			w.Header().Set(wire.BackupSHA256Trailer, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
		},
		"cut short": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", wire.BackupSizeTrailer+", "+wire.BackupSHA256Trailer)
			w.Write(bytes.Repeat([]byte("x"), 1000))
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewTLSServer(h)
			defer srv.Close()
			c := newClient(t, srv, "HostName="+testHost+";SharedAccessKeyName=owner;SharedAccessKey=AAAA")
			if _, err := c.Backup(t.Context(), &bytes.Buffer{}); !errors.Is(err, ErrBackupIncomplete) {
				t.Fatalf("err = %v, want ErrBackupIncomplete", err)
			}
		})
	}
	// The right size and sum pass: the checks above fail for their own reason.
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", wire.BackupSizeTrailer+", "+wire.BackupSHA256Trailer)
		w.Write([]byte("abc"))
		w.Header().Set(wire.BackupSizeTrailer, "3")
		w.Header().Set(wire.BackupSHA256Trailer, "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD")
	}))
	defer srv.Close()
	var buf bytes.Buffer
	c := newClient(t, srv, "HostName="+testHost+";SharedAccessKeyName=owner;SharedAccessKey=AAAA")
	if n, err := c.Backup(t.Context(), &buf); err != nil || n != 3 || buf.String() != "abc" {
		t.Fatalf("good stream: n=%d %q %v", n, buf.String(), err)
	}
}
