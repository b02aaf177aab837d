package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/bolt"
)

// checkStore opens the stopped server's store, runs its consistency check
// and returns it (closed by t.Cleanup).
func checkStore(t testing.TB, dir string) *bolt.Store {
	t.Helper()
	st, err := bolt.Open(filepath.Join(dir, datadir.DBFile), bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("opening the store after a kill: %v", err)
	}
	if err := st.Check(); err != nil {
		st.Close()
		t.Fatalf("store consistency check: %v", err)
	}
	return st
}

// killingChallenger is a TPM attestation that, when it receives a challenge,
// first SIGKILLs and restarts dpsd, then answers the challenge: a challenge
// issued before a kill must authenticate after the restart.
// killingChallenger restarts dpsd (SIGKILL, start) after the first
// challenge of each provisioning is received and before the device answers
// it; armed is set again before each provisioning.
type killingChallenger struct {
	*device.TPM
	restart func()
	armed   bool
	kills   int
}

func (k *killingChallenger) Challenge(ctx context.Context, s device.Session, c device.Challenge) (device.Credentials, error) {
	if k.armed {
		k.armed = false
		k.restart()
		k.kills++
	}
	return k.TPM.Challenge(ctx, s, c)
}

// TestCrashSafety runs `dpsd serve` as a child process while symmetric key
// devices provision, SIGKILLs it at random moments and restarts it, ten
// rounds: every device that was told "assigned" has its registration record,
// the store passes its consistency check after every kill, and a TPM device
// whose challenge was issued before a kill is refused at its reconnect (a
// challenge is valid only in the run that issued it), asks for a new one and
// provisions.
func TestCrashSafety(t *testing.T) {
	const (
		devices = 24
		rounds  = 10
	)
	// Devices re-provision in a loop: lift the per-device limits so that
	// every round keeps writing until the kill.
	p := newDpsd(t, buildDpsd(t), "-registers-per-device", "-1", "-polls-per-device", "-1")
	p.start()
	scope := p.idScope()
	api := p.apiClient(nil)
	ctx := ctxTimeout(t, 3*time.Minute)

	keys := make(map[string][]byte, devices)
	var es []*store.Enrollment
	for i := 0; i < devices; i++ {
		id := fmt.Sprintf("crash-device-%02d", i)
		keys[id] = randomKey(t, 32)
		es = append(es, &store.Enrollment{
			RegistrationID: id,
			EnrollmentSettings: store.EnrollmentSettings{
				Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
					SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(keys[id])}},
				ProvisioningStatus: store.StatusEnabled,
			},
		})
	}
	att := &device.TPM{Device: tpmsim.Open(t)}
	ek, err := att.EndorsementKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tpmID := attest.RegistrationID(ek)
	es = append(es, &store.Enrollment{
		RegistrationID: tpmID,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationTPM,
				TPM: &store.TPMAttestation{EndorsementKey: base64.StdEncoding.EncodeToString(ek)}},
			ProvisioningStatus: store.StatusEnabled,
		},
	})
	if res, err := api.BulkEnrollments(ctx, apiclient.BulkCreate, es); err != nil || !res.IsSuccessful {
		t.Fatalf("bulk enrollment: %+v %v", res, err)
	}

	assigned := make(map[string]*device.Result) // the last "assigned" each device was told
	var mu sync.Mutex
	provisions := 0
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	for round := 0; round < rounds; round++ {
		if round > 0 {
			p.start()
		}
		rctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for id, key := range keys {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for rctx.Err() == nil {
					res, err := device.Provision(rctx, p.deviceConfig(scope, id, &device.SymmetricKey{Key: key}))
					if err == nil && res.Status == device.StatusAssigned {
						mu.Lock()
						assigned[id] = res
						provisions++
						mu.Unlock()
					}
				}
			}()
		}
		// A random moment, counted in events rather than time (a slow
		// machine shifts nothing): after k more provisionings were told
		// assigned, k from 0 (before the first CONNECT) to one short of
		// every device's, while the other devices are mid-flight.
		mu.Lock()
		target := provisions + rng.IntN(devices)
		mu.Unlock()
		testkit.AwaitWithin(t, time.Minute, "the round's kill moment", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return provisions >= target
		})
		p.kill()
		cancel()
		wg.Wait()
		checkStore(t, p.dir).Close()
		t.Logf("round %d: %d provisionings told assigned so far, %d devices", round, provisions, len(assigned))
	}
	if len(assigned) == 0 {
		t.Fatal("no device was ever assigned: the kill moments were all too early")
	}

	// TPM: the challenge is received, dpsd is killed and restarted, then the
	// device answers it: refused (the used-challenge memory died with the
	// process), the device library asks for a new challenge and provisions.
	p.start()
	kc := &killingChallenger{TPM: att, restart: func() { p.kill(); p.start() }}
	for i := 0; i < 2; i++ {
		kc.armed = true
		cfg := p.deviceConfig(scope, tpmID, kc)
		res, err := device.Provision(ctx, cfg)
		if err != nil {
			t.Fatalf("TPM device after a kill between challenge and answer: %v\n%s", err, tail(p.logs.String(), 4000))
		}
		if res.Status != device.StatusAssigned {
			t.Fatalf("TPM device: status %q", res.Status)
		}
		assigned[tpmID] = res
	}
	if kc.kills != 2 {
		t.Fatalf("%d kills between challenge and answer, want 2", kc.kills)
	}
	// The log line may still be in the pipe from dpsd.
	testkit.AwaitWithin(t, 10*time.Second, "dpsd to log the refused earlier-run challenge", func() bool {
		return strings.Contains(p.logs.String(), "challenge was issued before the broker restarted")
	})
	res := provisionOK(t, ctx, p.deviceConfig(scope, tpmID, att))
	assigned[tpmID] = res
	p.kill()

	st := checkStore(t, p.dir)
	defer st.Close()
	for id, res := range assigned {
		reg, err := st.GetRegistration(context.Background(), id)
		if err != nil {
			t.Errorf("%s was told assigned but has no registration record: %v", id, err)
			continue
		}
		if reg.Status != device.StatusAssigned || reg.AssignedHub != res.AssignedHub || reg.DeviceID != res.DeviceID {
			t.Errorf("%s: record %s %s %s, device was told %s %s %s", id,
				reg.Status, reg.AssignedHub, reg.DeviceID, res.Status, res.AssignedHub, res.DeviceID)
		}
		// The record is at least as new as the last assignment the device was told.
		told, err := time.Parse(time.RFC3339Nano, res.State.LastUpdatedDateTimeUTC)
		if err != nil {
			t.Errorf("%s: lastUpdatedDateTimeUtc %q: %v", id, res.State.LastUpdatedDateTimeUTC, err)
		} else if reg.UpdatedAt.Before(told.Add(-time.Second)) {
			t.Errorf("%s: record updated %v, older than the assignment told at %v (a lost write)", id, reg.UpdatedAt, told)
		}
	}
	t.Logf("%d of %d devices were told assigned across %d SIGKILLs; all have their records", len(assigned), devices+1, rounds+3)
}
