package bolt

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tpmdps/dpsd/store"
)

// benchEnrollment is a realistic TPM or symmetric-key enrollment.
func benchEnrollment(i int) *store.Enrollment {
	id := fmt.Sprintf("device-%08d", i)
	e := &store.Enrollment{RegistrationID: id, DeviceID: id, EnrollmentSettings: store.EnrollmentSettings{ProvisioningStatus: store.StatusEnabled, IoTHubHostName: "hub.example.net"}}
	if i%2 == 0 {
		// A TPM2B_PUBLIC RSA-2048 EK in base64 is about 420 characters.
		ek := make([]byte, 314)
		for j := range ek {
			ek[j] = byte(i + j)
		}
		e.Attestation = store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: b64(ek)}}
	} else {
		e.Attestation = store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
			PrimaryKey: b64([]byte(fmt.Sprintf("primary-%026d", i))), SecondaryKey: b64([]byte(fmt.Sprintf("second-%027d", i)))}}
	}
	return e
}

func b64(b []byte) string {
	out, _ := json.Marshal(b)
	return string(out[1 : len(out)-1])
}

func BenchmarkGetEnrollment(b *testing.B) {
	ctx := context.Background()
	s := openTest(b, nil)
	const n = 10000
	es := make([]*store.Enrollment, n)
	for i := range es {
		es[i] = benchEnrollment(i)
	}
	if _, err := s.PutEnrollments(ctx, es); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := s.GetEnrollment(ctx, es[i%n].RegistrationID); err != nil {
				b.Error(err)
				return
			}
			i += 7
		}
	})
}

func BenchmarkPutEnrollment(b *testing.B) {
	ctx := context.Background()
	s := openTest(b, nil)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := s.PutEnrollment(ctx, benchEnrollment(i%1000), ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRecordRegistration measures durable registration throughput with
// 1, 16 and 256 concurrent writers: each write is a registration plus its
// operation, fsynced before it returns. "nobatch" commits every write alone
// (db.Update), the baseline; the other variants use the group commit, under
// several Options.MaxBatchDelay values (the group commit has no timer, so
// they should not differ: the figures show it).
func BenchmarkRecordRegistration(b *testing.B) {
	for _, delay := range []time.Duration{0, time.Millisecond, 2 * time.Millisecond, 10 * time.Millisecond} {
		for _, writers := range []int{1, 16, 256} {
			name := fmt.Sprintf("delay=%s/writers=%d", delay, writers)
			if delay == 0 {
				name = fmt.Sprintf("nobatch/writers=%d", writers)
			}
			b.Run(name, func(b *testing.B) {
				benchRecord(b, writers, delay)
			})
		}
	}
}

func benchRecord(b *testing.B, writers int, delay time.Duration) {
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "bench.db")
	s, err := Open(path, Options{MaxBatchDelay: delay})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	s.noBatch = delay == 0
	var next atomic.Int64
	exp := time.Now().Add(time.Hour)
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				id := fmt.Sprintf("reg-%d", i)
				r := &store.Registration{RegistrationID: id, Status: store.RegistrationAssigned, AssignedHub: "hub.example.net",
					DeviceID: id, EnrollmentGroupID: "g1", HubKey: []byte("0123456789abcdef0123456789abcdef")}
				op := &store.Operation{ID: "op-" + id, RegistrationID: id, Status: store.RegistrationAssigned, ExpiresAt: exp}
				if _, err := s.RecordRegistration(ctx, r, op); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
}

// BenchmarkEnrollmentCodec measures the JSON encoding of a stored record,
// the cost a binary encoding would save.
func BenchmarkEnrollmentCodec(b *testing.B) {
	e := benchEnrollment(0) // TPM
	data, _ := json.Marshal(enrollmentRecord{Enrollment: e})
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(enrollmentRecord{Enrollment: e}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rec := enrollmentRecord{Enrollment: &store.Enrollment{}}
			if err := json.Unmarshal(data, &rec); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(data)), "bytes/record")
	})
}

// BenchmarkMillionEnrollments loads 1,000,000 enrollments in bulk
// transactions of 10,000, then reports the load time, the file size, the
// reopen time and the lookup latency percentiles. It takes about a minute
// and a gigabyte of disk, so it runs only with DPSD_BENCH_MILLION=1:
//
//	DPSD_BENCH_MILLION=1 go test -run '^$' -bench MillionEnrollments -benchtime 1x ./store/
func BenchmarkMillionEnrollments(b *testing.B) {
	if os.Getenv("DPSD_BENCH_MILLION") != "1" {
		b.Skip("set DPSD_BENCH_MILLION=1 to run the 1,000,000-enrollment benchmark")
	}
	const chunk, lookups = 10_000, 100_000
	total := 1_000_000
	if n, err := strconv.Atoi(os.Getenv("DPSD_BENCH_MILLION_N")); err == nil && n >= chunk {
		total = n // a smaller trial run
	}
	ctx := context.Background()
	for b.Loop() {
		path := filepath.Join(b.TempDir(), "million.db")
		s, err := Open(path, Options{})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		batch := make([]*store.Enrollment, 0, chunk)
		for i := range total {
			batch = append(batch, benchEnrollment(i))
			if len(batch) == chunk {
				if _, err := s.PutEnrollments(ctx, batch); err != nil {
					b.Fatal(err)
				}
				batch = batch[:0]
			}
		}
		load := time.Since(start)
		if n, err := s.CountEnrollments(ctx); err != nil || n != total {
			b.Fatalf("count %d, %v", n, err)
		}
		var bs bbolt.BucketStats
		_ = s.db.View(func(tx *bbolt.Tx) error {
			bs = tx.Bucket([]byte(bktEnrollments)).Stats()
			return nil
		})
		free := s.db.Stats().FreePageN
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		s, err = Open(path, Options{})
		if err != nil {
			b.Fatal(err)
		}
		open := time.Since(start)
		rng := rand.New(rand.NewPCG(1, 2))
		lat := make([]time.Duration, lookups)
		for i := range lat {
			id := fmt.Sprintf("device-%08d", rng.IntN(total))
			t0 := time.Now()
			if _, err := s.GetEnrollment(ctx, id); err != nil {
				b.Fatal(err)
			}
			lat[i] = time.Since(t0)
		}
		slices.Sort(lat)
		start = time.Now()
		p, err := s.ListEnrollments(ctx, store.Query{MaxItems: 1000, Continuation: ""})
		if err != nil || len(p.Items) != 1000 {
			b.Fatal(err)
		}
		page := time.Since(start)
		_ = s.Close()
		b.ReportMetric(load.Seconds(), "load-s")
		b.ReportMetric(float64(total)/load.Seconds(), "load-rec/s")
		b.ReportMetric(float64(fi.Size())/(1<<20), "file-MiB")
		b.ReportMetric(float64(bs.LeafInuse)/(1<<20), "leaf-inuse-MiB")
		b.ReportMetric(float64(bs.LeafAlloc)/(1<<20), "leaf-alloc-MiB")
		b.ReportMetric(float64(free*os.Getpagesize())/(1<<20), "free-MiB")
		b.ReportMetric(float64(open.Microseconds())/1000, "open-ms")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "lookup-p50-us")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "lookup-p99-us")
		b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "lookup-max-us")
		b.ReportMetric(float64(page.Microseconds())/1000, "page1000-ms")
	}
}
