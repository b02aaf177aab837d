package provision

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/allocator/allocatortest"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/iothubtest"
	"github.com/tpmdps/dpsd/store"
)

// The tutorial's public test vector (tutorial-custom-allocation-policies):
// the group key and the two devices' derived keys.
const (
	contosoGroupKey  = "oiK77Oy7rBw8YB6IS6ukRChAw+Yq6GC61RMrPLSTiOOtdI+XDu0LmLuNm11p+qv2I+adqGUdZHm46zXAQdZoOA=="
	toasterID        = "breakroom499-contoso-tstrsd-007"
	toasterKey       = "JC8F96eayuQwwz+PkE7IzjH2lIAjCUnAa61tDigBnSs="
	heatpumpID       = "mainbuilding167-contoso-hpsd-088"
	heatpumpKey      = "6uejA9PfkQgmYylj8Zerp3kcbeVrGZ172YLa7VSnJzg="
	toastersHub      = "contoso-toasters-hub-1098.azure-devices.net"
	heatpumpsHub     = "contoso-heatpumps-hub-1098.azure-devices.net"
	contosoGroupName = "contoso-custom-allocated-devices"
)

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "allocator", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// shapeDiff lists where got's JSON structure differs from want's: the same
// member names in every object, the same kind of value everywhere (arrays
// compared element by element, an empty array against any).
func shapeDiff(got, want any, path string) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %T, want an object", path, got)}
		}
		var out []string
		keys := map[string]bool{}
		for k := range w {
			keys[k] = true
		}
		for k := range g {
			keys[k] = true
		}
		names := make([]string, 0, len(keys))
		for k := range keys {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			gv, gok := g[k]
			wv, wok := w[k]
			switch {
			case !gok:
				out = append(out, path+"."+k+": missing")
			case !wok:
				out = append(out, path+"."+k+": not in the fixture")
			default:
				out = append(out, shapeDiff(gv, wv, path+"."+k)...)
			}
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %T, want an array", path, got)}
		}
		var out []string
		for i := range min(len(g), len(w)) {
			out = append(out, shapeDiff(g[i], w[i], fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	default:
		if reflect.TypeOf(got) != reflect.TypeOf(want) {
			return []string{fmt.Sprintf("%s: %T, want %T", path, got, want)}
		}
	}
	return nil
}

func decodeJSON(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return m
}

var dpsTime = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$`)

// contosoEnv is the tutorial's setup: the group with the tutorial's key,
// custom allocation across the toasters and heat pumps hubs (stand-ins
// under the tutorial's names), the sample function as the webhook.
func contosoEnv(t *testing.T) (*hubEnv, *iothubtest.Hub, *iothubtest.Hub) {
	e := newHubEnv(t, 2)
	toasters, heatpumps := e.hubs[0], e.hubs[1]
	e.factory.alias[toastersHub] = toasters
	e.factory.alias[heatpumpsHub] = heatpumps
	e.putHub(&store.LinkedHub{Name: toastersHub})
	e.putHub(&store.LinkedHub{Name: heatpumpsHub})
	e.putGroup(&store.Group{EnrollmentGroupID: contosoGroupName, EnrollmentSettings: store.EnrollmentSettings{
		Attestation:                store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: contosoGroupKey}},
		Capabilities:               &store.Capabilities{IoTEdge: false},
		ReprovisionPolicy:          &store.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true},
		AllocationPolicy:           "custom",
		IoTHubs:                    []string{toastersHub, heatpumpsHub},
		CustomAllocationDefinition: &store.CustomAllocationDefinition{WebhookURL: e.webhook.URL, APIVersion: "2021-10-01"},
	}})
	return e, toasters, heatpumps
}

// TestCustomAllocationContosoTutorial: the tutorial end to end. The
// devices authenticate with the tutorial's derived keys; dpsd's request
// for the toaster has exactly the members of the documentation's request
// (F1; on the second registration, with the device's payload, F5), the
// key masked, no key sent; the sample function's answer is applied: the
// hub it chose, and the twin it gave on the hub's side.
func TestCustomAllocationContosoTutorial(t *testing.T) {
	e, toasters, heatpumps := contosoEnv(t)
	for id, key := range map[string]string{toasterID: toasterKey, heatpumpID: heatpumpKey} {
		if got := b64(deriveKey(mustB64(t, contosoGroupKey), id)); got != key {
			t.Fatalf("derived key of %s: %s, the tutorial says %s", id, got, key)
		}
	}
	id := e.mustConnect(toasterID, e.sas(toasterID, mustB64(t, toasterKey), ""))
	got := e.awaitFinal(id, e.register(id, RegisterRequest{}), 0)
	st := got.RegistrationState
	if got.Status != "assigned" || st.AssignedHub != toastersHub || st.DeviceID != toasterID || st.Substatus != SubstatusInitialAssignment ||
		st.SymmetricKey == nil || st.SymmetricKey.EnrollmentGroupID != contosoGroupName {
		t.Fatalf("toaster: %s", encode(t, got))
	}
	reqs := e.webhook.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d webhook requests", len(reqs))
	}
	req := decodeJSON(t, reqs[0])
	if d := shapeDiff(req, decodeJSON(t, fixture(t, "f1-request-initial.json")), "$"); len(d) > 0 {
		t.Fatalf("the request differs from the documentation's (F1):\n%s\nrequest: %s", strings.Join(d, "\n"), reqs[0])
	}
	g := req["enrollmentGroup"].(map[string]any)
	rc := req["deviceRuntimeContext"].(map[string]any)
	cad := g["customAllocationDefinition"].(map[string]any)
	if rc["registrationId"] != toasterID || !reflect.DeepEqual(req["linkedHubs"], []any{toastersHub, heatpumpsHub}) ||
		g["enrollmentGroupId"] != contosoGroupName || !reflect.DeepEqual(g["attestation"], map[string]any{"type": "symmetricKey"}) ||
		g["allocationPolicy"] != "custom" || cad["apiVersion"] != "2021-10-01" || !strings.HasSuffix(cad["webhookUrl"].(string), "/api/HttpTrigger1?****") ||
		!dpsTime.MatchString(g["createdDateTimeUtc"].(string)) || !strings.HasPrefix(g["etag"].(string), `"`) {
		t.Fatalf("request values: %s", reqs[0])
	}
	if strings.Contains(string(reqs[0]), allocatortest.Code) || strings.Contains(string(reqs[0]), contosoGroupKey) || strings.Contains(string(reqs[0]), toasterKey) {
		t.Fatalf("a secret is in the request: %s", reqs[0])
	}
	ident, ok := toasters.Device(toasterID)
	if !ok || ident.PrimaryKey != toasterKey {
		t.Fatalf("toaster identity: %+v", ident)
	}
	tags, desired, _ := toasters.Twin(toasterID)
	if !reflect.DeepEqual(tags, map[string]any{"deviceType": "toaster"}) || !reflect.DeepEqual(desired, map[string]any{"state": "ready", "darknessSetting": "medium"}) {
		t.Fatalf("toaster twin: %v %v", tags, desired)
	}

	// The second registration carries the tutorial's payload: the request
	// is F5's, with the current hub and device id.
	payload := `{"MyDeviceFirmwareVersion":"12.0.2.5","MyDeviceProvisioningVersion":"1.0.0.0"}`
	id = e.mustConnect(toasterID, e.sas(toasterID, mustB64(t, toasterKey), ""))
	got = e.awaitFinal(id, e.register(id, RegisterRequest{Payload: json.RawMessage(payload)}), 0)
	if got.RegistrationState.AssignedHub != toastersHub || got.RegistrationState.Substatus != SubstatusReprovisioned {
		t.Fatalf("again: %s", encode(t, got))
	}
	reqs = e.webhook.Requests()
	req = decodeJSON(t, reqs[1])
	if d := shapeDiff(req, decodeJSON(t, fixture(t, "f5-request-reregistration.json")), "$"); len(d) > 0 {
		t.Fatalf("the re-registration request differs from the documentation's (F5):\n%s\nrequest: %s", strings.Join(d, "\n"), reqs[1])
	}
	rc = req["deviceRuntimeContext"].(map[string]any)
	if rc["currentIotHubHostName"] != toastersHub || rc["currentDeviceId"] != toasterID ||
		!reflect.DeepEqual(rc["payload"], decodeJSON(t, []byte(payload))) {
		t.Fatalf("runtime context: %v", rc)
	}

	id = e.mustConnect(heatpumpID, e.sas(heatpumpID, mustB64(t, heatpumpKey), ""))
	got = e.awaitFinal(id, e.register(id, RegisterRequest{}), 0)
	if got.RegistrationState.AssignedHub != heatpumpsHub {
		t.Fatalf("heat pump: %s", encode(t, got))
	}
	if tags, desired, _ := heatpumps.Twin(heatpumpID); tags["deviceType"] != "heatpump" || desired["temperatureSetting"] != "65" {
		t.Fatalf("heat pump twin: %v %v", tags, desired)
	}
	// A device the sample does not know is refused by it: 400207.
	unknown := "lobby-contoso-unknown-001"
	id = e.mustConnect(unknown, e.sas(unknown, deriveKey(mustB64(t, contosoGroupKey), unknown), ""))
	got = e.awaitFinal(id, e.register(id, RegisterRequest{}), 0)
	if got.Status != "failed" || got.RegistrationState.ErrorCode != ErrorCodeCustomAllocationFailed || got.RegistrationState.ErrorMessage != "Custom allocation failed with status code: 400" {
		t.Fatalf("unknown device: %s", encode(t, got))
	}
}

// TestCustomAllocationFixtureResponses: the documentation's answers (F3,
// F4 with a payload, F6), served byte for byte, are applied: the hub, the
// twin at the hub, and F4's payload in registrationState.payload and the
// registration record.
func TestCustomAllocationFixtureResponses(t *testing.T) {
	for _, c := range []struct {
		file, hub, payload string
	}{
		{"f3-response.json", "custom-allocation-toasters-hub.azure-devices.net", ""},
		{"f4-response-payload.json", "custom-allocation-toasters-hub.azure-devices.net", `{"property1":"value1"}`},
		{"f6-response.json", toastersHub, ""},
	} {
		t.Run(c.file, func(t *testing.T) {
			e, toasters, _ := contosoEnv(t)
			e.factory.alias[c.hub] = toasters
			e.putHub(&store.LinkedHub{Name: c.hub})
			g, err := e.st.GetGroup(e.ctx, contosoGroupName)
			if err != nil {
				t.Fatal(err)
			}
			g.IoTHubs = []string{c.hub, heatpumpsHub}
			e.putGroup(g)
			body := fixture(t, c.file)
			e.webhook.SetHandler(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write(body)
			})
			id := e.mustConnect(toasterID, e.sas(toasterID, mustB64(t, toasterKey), ""))
			got := e.awaitFinal(id, e.register(id, RegisterRequest{Payload: json.RawMessage(`{"from":"device"}`)}), 0)
			st := got.RegistrationState
			if got.Status != "assigned" || st.AssignedHub != c.hub {
				t.Fatalf("%s", encode(t, got))
			}
			wantPayload := `{"from":"device"}`
			if c.payload != "" {
				wantPayload = c.payload
			}
			if !reflect.DeepEqual(decodeJSON(t, st.Payload), decodeJSON(t, []byte(wantPayload))) {
				t.Fatalf("payload %s, want %s", st.Payload, wantPayload)
			}
			rec, err := e.st.GetRegistration(e.ctx, toasterID)
			if err != nil || !reflect.DeepEqual(decodeJSON(t, rec.Payload), decodeJSON(t, []byte(wantPayload))) {
				t.Fatalf("record payload %s %v", rec.Payload, err)
			}
			if tags, desired, _ := toasters.Twin(toasterID); tags["deviceType"] != "toaster" || desired["darknessSetting"] != "medium" {
				t.Fatalf("twin %v %v", tags, desired)
			}
		})
	}
}

// TestCustomAllocationFailures: the cloud's failure semantics. 401 fails
// with 400209; an answer without a hub with 400208; a hub not offered,
// and other errors, with 400207 and a clear message; 5xx is retried until
// the webhook recovers; a webhook that never answers ends per the
// fallback policy: refused (400207) or hashed across the hubs offered.
func TestCustomAllocationFailures(t *testing.T) {
	for _, c := range []struct {
		name     string
		handler  http.HandlerFunc
		fallback string
		code     int
		msg      string
		hub      string
	}{
		{"401", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(401) }, "", ErrorCodeCustomAllocationUnauthorized, "status code: 401", ""},
		{"no hub", func(w http.ResponseWriter, r *http.Request) {
			allocatortest.JSON(w, 200, map[string]any{"iotHubHostName": ""})
		}, "", ErrorCodeNoHub, "no iotHubHostName", ""},
		{"hub not offered", func(w http.ResponseWriter, r *http.Request) {
			allocatortest.JSON(w, 200, map[string]any{"iotHubHostName": "elsewhere.azure-devices.net"})
		}, "", ErrorCodeCustomAllocationFailed, `"elsewhere.azure-devices.net", which is not one of the linked hubs offered`, ""},
		{"404", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404) }, "", ErrorCodeCustomAllocationFailed, "status code: 404", ""},
		{"timeout, refuse", nil, store.FallbackRefuse, ErrorCodeCustomAllocationFailed, "did not answer", ""},
		{"timeout, hashed", nil, store.FallbackHashed, 0, "", "hashed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, _, _ := contosoEnv(t)
			block := make(chan struct{})
			defer close(block)
			h := c.handler
			if h == nil {
				h = func(w http.ResponseWriter, r *http.Request) {
					select {
					case <-block:
					case <-r.Context().Done():
					}
				}
			}
			e.webhook.SetHandler(h)
			g, _ := e.st.GetGroup(e.ctx, contosoGroupName)
			g.CustomAllocationDefinition.TimeoutSeconds = 1
			g.CustomAllocationDefinition.FallbackPolicy = c.fallback
			e.putGroup(g)
			id := e.mustConnect(toasterID, e.sas(toasterID, mustB64(t, toasterKey), ""))
			step := time.Duration(0)
			if c.handler == nil {
				step = 10 * time.Second
			}
			got := e.awaitFinal(id, e.register(id, RegisterRequest{}), step)
			st := got.RegistrationState
			if c.hub != "" {
				if got.Status != "assigned" || (st.AssignedHub != toastersHub && st.AssignedHub != heatpumpsHub) {
					t.Fatalf("%s", encode(t, got))
				}
				return
			}
			if got.Status != "failed" || st.ErrorCode != c.code || !strings.Contains(st.ErrorMessage, c.msg) || strings.Contains(st.ErrorMessage, allocatortest.Code) {
				t.Fatalf("%s", encode(t, got))
			}
		})
	}

	t.Run("client certificate the server lacks", func(t *testing.T) {
		e, _, _ := contosoEnv(t)
		g, _ := e.st.GetGroup(e.ctx, contosoGroupName)
		g.CustomAllocationDefinition.ClientCertificate = "tenant-z"
		e.putGroup(g)
		before := e.webhook.Count()
		id := e.mustConnect(toasterID, e.sas(toasterID, mustB64(t, toasterKey), ""))
		got := e.awaitFinal(id, e.register(id, RegisterRequest{}), 0)
		st := got.RegistrationState
		if got.Status != "failed" || st.ErrorCode != ErrorCodeCustomAllocationFailed || !strings.Contains(st.ErrorMessage, `"tenant-z"`) {
			t.Fatalf("%s", encode(t, got))
		}
		if n := e.webhook.Count(); n != before {
			t.Fatalf("the webhook was called %d times without the certificate the group names", n-before)
		}
	})

	t.Run("503 then recovered", func(t *testing.T) {
		e, _, _ := contosoEnv(t)
		var mu sync.Mutex
		fails := 3
		e.webhook.SetHandler(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			f := fails > 0
			fails--
			mu.Unlock()
			if f {
				w.WriteHeader(503)
				return
			}
			allocatortest.Contoso(w, r)
		})
		id := e.mustConnect(toasterID, e.sas(toasterID, mustB64(t, toasterKey), ""))
		opID := e.register(id, RegisterRequest{})
		testkit.Await(t, "the first webhook call", func() bool { return e.webhook.Count() >= 1 })
		e.pollAssigning(id, opID)
		got := e.awaitFinal(id, opID, time.Second)
		if got.Status != "assigned" || got.RegistrationState.AssignedHub != toastersHub || e.webhook.Count() != 4 {
			t.Fatalf("%s after %d calls", encode(t, got), e.webhook.Count())
		}
	})
}
