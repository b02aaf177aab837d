package e2e

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/iothubtest"
	"github.com/tpmdps/dpsd/store"
)

// TestHandoffCrash runs `dpsd serve` as a child process handing devices
// off to a stand-in IoT hub (a linked hub with a connection string), and
// SIGKILLs it while the hub holds its answer to a device create: the
// identity exists in the hub, dpsd has not recorded the registration. After
// the restart the pending job is done again from the store: every device
// ends assigned with its identity in the hub, created exactly once (the
// stand-in counts creates), no registration record says assigned without
// an identity, and no job is left.
func TestHandoffCrash(t *testing.T) {
	const rounds = 3
	hub := iothubtest.Start(t, iothubtest.Options{})
	caFile := filepath.Join(t.TempDir(), "hub-ca.pem")
	if err := os.WriteFile(caFile, hub.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	p := newDpsd(t, buildDpsd(t), "-outbound-ca-file", caFile, "-handoff-timeout", "2m")
	p.start()
	scope := p.idScope()
	api := p.apiClient(nil)
	ctx := ctxTimeout(t, 3*time.Minute)
	if _, err := api.PutLinkedHub(ctx, &store.LinkedHub{Name: hub.HostName, ConnectionString: hub.ConnectionString}, ""); err != nil {
		t.Fatal(err)
	}
	keys := map[string][]byte{}
	for i := range rounds {
		id := fmt.Sprintf("handoff-device-%d", i)
		keys[id] = randomKey(t, 32)
		e := &store.Enrollment{RegistrationID: id, EnrollmentSettings: store.EnrollmentSettings{
			Attestation:    store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(keys[id])}},
			IoTHubHostName: hub.HostName,
			InitialTwin:    []byte(`{"tags":{"crash":"test"}}`),
		}}
		if _, err := api.PutEnrollment(ctx, e, ""); err != nil {
			t.Fatal(err)
		}
	}
	for i := range rounds {
		id := fmt.Sprintf("handoff-device-%d", i)
		created, release := hub.HoldCreates()
		type result struct {
			res *device.Result
			err error
		}
		done := make(chan result, 1)
		go func() {
			// A device whose connection dies mid-way provisions again, as
			// a real one does.
			for {
				res, err := device.Provision(ctx, p.deviceConfig(scope, id, &device.SymmetricKey{Key: keys[id]}))
				if err == nil || ctx.Err() != nil {
					done <- result{res, err}
					return
				}
			}
		}()
		if got := <-created; got != id {
			t.Fatalf("created %q, want %q", got, id)
		}
		// The hub has the identity; dpsd waits for the answer: kill it.
		p.kill()
		release()
		checkStore(t, p.dir).Close()
		p.start()
		r := <-done
		if r.err != nil || r.res.Status != device.StatusAssigned || r.res.AssignedHub != hub.HostName {
			t.Fatalf("round %d: %+v %v\n%s", i, r.res, r.err, tail(p.logs.String(), 4000))
		}
		if n := hub.Creates(id); n != 1 {
			t.Fatalf("round %d: %s created %d times", i, id, n)
		}
		if tags, _, _ := hub.Twin(id); tags["crash"] != "test" {
			t.Fatalf("round %d: twin %v", i, tags)
		}
	}
	// The jobs the kills interrupted are finished too (the devices'
	// retries made second ones): await an empty outbox, then check the store.
	testkit.AwaitWithin(t, time.Minute, "the outbox to empty", func() bool {
		return p.metric("dpsd_handoff_pending_jobs") == "0"
	})
	p.stop()
	st := checkStore(t, p.dir)
	defer st.Close()
	if n, err := st.CountJobs(context.Background()); err != nil || n != 0 {
		t.Fatalf("%d jobs left (%v)", n, err)
	}
	for id := range keys {
		reg, err := st.GetRegistration(context.Background(), id)
		if err != nil || reg.Status != store.RegistrationAssigned {
			t.Fatalf("%s: %+v %v", id, reg, err)
		}
		if _, ok := hub.Device(id); !ok || hub.Creates(id) != 1 {
			t.Fatalf("%s assigned without exactly one identity in its hub (creates %d)", id, hub.Creates(id))
		}
	}
}

// metric returns the value of an unlabelled metric on dpsd's /metrics
// ("" when absent or unreadable).
func (p *dpsdProc) metric(name string) string {
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.rootCAs(), MinVersion: tls.VersionTLS12}}, Timeout: 10 * time.Second}
	res, err := client.Get("https://" + p.api + "/metrics")
	if err != nil {
		return ""
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
