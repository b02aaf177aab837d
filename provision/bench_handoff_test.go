package provision

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/allocator/allocatortest"
	"github.com/tpmdps/dpsd/store"
)

// recordedSignal signals every recorded registration (provision.Observer).
type recordedSignal struct{ ch chan string }

func (o *recordedSignal) Registered(_ context.Context, ev RegistrationEvent) {
	o.ch <- ev.RegistrationID
}
func (o *recordedSignal) ChallengeIssued(context.Context, string)      {}
func (o *recordedSignal) AuthFailed(context.Context, string)           {}
func (o *recordedSignal) EKCertificateChecked(context.Context, string) {}

// BenchmarkHandoffLatency measures, one registration at a time, the time
// from a register to its recorded outcome (the operation a poll then
// answers as final), for a group's symmetric key devices, each a new
// device:
//
//   - sync: a linked hub without a connector (the synchronous path: the
//     outcome is recorded before the register returns);
//   - connector: a linked hub with a connection string, the stand-in IoT
//     hub on loopback HTTPS (the outbox: one durable enqueue, a worker,
//     the hub's GET, PUT of the identity and PUT of the twin, one durable
//     finish);
//   - webhook: a custom allocation webhook on loopback HTTPS answering at
//     once (the documentation's answer: a hub and a twin), the hub without
//     a connector;
//   - webhook-connector: both.
//
// It reports p50-µs and p99-µs of that time; the added latency of a path
// is its figure less sync's. A device sees the outcome at its next poll,
// retry-after (1 s by default for a registration in the outbox) after its
// register.
func BenchmarkHandoffLatency(b *testing.B) {
	for _, c := range []struct {
		name               string
		connector, webhook bool
	}{{"sync", false, false}, {"connector", true, false}, {"webhook", false, true}, {"webhook-connector", true, true}} {
		b.Run(c.name, func(b *testing.B) {
			sig := &recordedSignal{ch: make(chan string, 1)}
			e := newHubEnv(b, 1, func(cfg *Config) { cfg.Observer = sig })
			hub := e.hubs[0]
			lh := &store.LinkedHub{Name: hub.HostName}
			if c.connector {
				lh.ConnectionString = hub.ConnectionString
			}
			e.putHub(lh)
			g := &store.Group{EnrollmentGroupID: "bench", EnrollmentSettings: store.EnrollmentSettings{
				Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
					SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: b64(symKey(9))}},
				IoTHubs:     []string{hub.HostName},
				InitialTwin: []byte(`{"tags":{"line":"bench"},"properties":{"desired":{"fw":"1.0"}}}`),
			}}
			if c.webhook {
				e.webhook.SetHandler(func(w http.ResponseWriter, r *http.Request) {
					allocatortest.JSON(w, 200, map[string]any{"iotHubHostName": hub.HostName,
						"initialTwin": map[string]any{"tags": map[string]any{"deviceType": "toaster"}}})
				})
				g.AllocationPolicy = "custom"
				g.CustomAllocationDefinition = &store.CustomAllocationDefinition{WebhookURL: e.webhook.URL, APIVersion: "2021-10-01"}
			}
			e.putGroup(g)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				regID := fmt.Sprintf("bench-%s-%d", c.name, i)
				id := e.mustConnect(regID, e.sas(regID, deriveKey(symKey(9), regID), ""))
				start := time.Now()
				resp := e.svc.Register(e.ctx, id, RegisterRequest{}, "tr-bench")
				if resp.Status != 202 {
					b.Fatalf("register: %d %s", resp.Status, encode(b, resp.Body))
				}
				if got := <-sig.ch; got != regID {
					b.Fatalf("recorded %s, want %s", got, regID)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			if c.connector && hub.Creates(fmt.Sprintf("bench-%s-%d", c.name, b.N-1)) != 1 {
				b.Fatal("the last device was not created in the hub")
			}
			if c.webhook && e.webhook.Count() < b.N {
				b.Fatalf("the webhook was called %d times for %d registrations", e.webhook.Count(), b.N)
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
