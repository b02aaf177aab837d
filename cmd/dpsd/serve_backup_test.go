package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/store"
)

// ownerClient is an API client of p with the owner connection string.
func (p *inProcess) ownerClient(t *testing.T, timeout time.Duration) (*apiclient.Client, apiclient.ConnectionString) {
	t.Helper()
	raw, err := os.ReadFile(p.CSFile)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := apiclient.ParseConnectionString(string(raw))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.pool, ServerName: "localhost"}}}
	c, err := apiclient.New(strings.TrimSpace(string(raw)), apiclient.Options{BaseURL: "https://" + p.API, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	return c, cs
}

// fillerEnrollments are n symmetric-key enrollments prefix-00000.. with a
// 1 KiB initial twin each, to make the store large.
func fillerEnrollments(prefix string, n int) []*store.Enrollment {
	twin := json.RawMessage(`{"tags":{"pad":"` + strings.Repeat("x", 1024) + `"}}`)
	es := make([]*store.Enrollment, n)
	for i := range es {
		es[i] = &store.Enrollment{RegistrationID: fmt.Sprintf("%s-%05d", prefix, i),
			EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey}, InitialTwin: twin}}
	}
	return es
}

// TestStalledBackupDoesNotFreeze: a /backup client that stops reading after
// the first bytes must not stall the service. While it holds its
// connection, the store grows past its memory map (which waits for every
// open read transaction), enrollments are written and a device provisions;
// all of it finishes. Then the backup is read to the end and matches its
// trailers.
func TestStalledBackupDoesNotFreeze(t *testing.T) {
	p := serveInProcess(t, "127.0.0.1:0")
	ctx := context.Background()
	cl, cs := p.ownerClient(t, 2*time.Minute)
	// About 13 MiB of records: more than the socket buffers between the
	// server and a client that does not read.
	if res, err := cl.BulkEnrollments(ctx, apiclient.BulkCreate, fillerEnrollments("fill", 10000)); err != nil || !res.IsSuccessful {
		t.Fatalf("filling the store: %v %+v", err, res)
	}
	key := enrollThroughAPI(t, p.started, "during-backup")

	// The stalled client: a small receive buffer (not below a loopback MSS, or
	// the window would reopen only with zero-window probes), the headers and 1 KiB of
	// the body read, then nothing.
	raw, err := net.Dial("tcp", p.API)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.(*net.TCPConn).SetReadBuffer(256 << 10)
	conn := tls.Client(raw, &tls.Config{RootCAs: p.pool, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	tok := attest.SignSAS(cs.Key, cs.HostName, time.Now().Add(time.Hour), cs.KeyName)
	fmt.Fprintf(conn, "GET %s?api-version=2021-10-01 HTTP/1.1\r\nHost: localhost\r\nAuthorization: %s\r\n\r\n", wire.BackupPath, tok)
	br := bufio.NewReaderSize(conn, 4096)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("backup: %v %+v", err, res)
	}
	sum := sha256.New()
	if _, err := io.CopyN(sum, res.Body, 1024); err != nil {
		t.Fatal(err)
	}

	// The service keeps working: twice the store's size in new records (the
	// file must grow and be mapped again), a single write and a device.
	writes, writeCtx := 3, context.Background()
	writeCtx, cancel := context.WithTimeout(writeCtx, 90*time.Second)
	defer cancel()
	errs := make(chan error, writes)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 2 {
			res, err := cl.BulkEnrollments(writeCtx, apiclient.BulkCreate, fillerEnrollments(fmt.Sprint("grow", i), 10000))
			if err == nil && !res.IsSuccessful {
				err = fmt.Errorf("bulk errors %+v", res.Errors[:1])
			}
			if err != nil {
				errs <- fmt.Errorf("bulk write %d: %w", i, err)
				return
			}
		}
		errs <- nil
	})
	wg.Go(func() {
		_, err := cl.PutEnrollment(writeCtx, &store.Enrollment{RegistrationID: "one-more", EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey}}}, "")
		errs <- err
	})
	wg.Go(func() {
		r, err := device.Provision(writeCtx, device.Config{Host: "localhost", Port: apiPort(t, p.MQTTS), RootCAs: p.pool,
			IDScope: p.IDScope, RegistrationID: "during-backup", Attestation: &device.SymmetricKey{Key: key}, PollInterval: 100 * time.Millisecond})
		if err == nil && r.Status != device.StatusAssigned {
			err = fmt.Errorf("status %s", r.Status)
		}
		errs <- err
	})
	for range writes {
		select {
		case err := <-errs:
			if err != nil {
				t.Errorf("while a backup client stalls: %v", err)
			}
		case <-writeCtx.Done():
			t.Fatal("writes and provisioning did not finish while a backup client stalled")
		}
	}
	wg.Wait()

	// The stalled client resumes: its copy is whole and consistent.
	n, err := io.Copy(sum, res.Body)
	if err != nil {
		t.Fatalf("reading the rest of the backup: %v", err)
	}
	if got, want := res.Trailer.Get(wire.BackupSHA256Trailer), hex.EncodeToString(sum.Sum(nil)); got != want {
		t.Fatalf("backup of %d bytes: sha256 trailer %q, computed %q", n+1024, got, want)
	}
}
