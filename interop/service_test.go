package interop

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/store"
)

// serviceSpec is the argument of service.js.
type serviceSpec struct {
	Op               string `json:"op"`
	ConnectionString string `json:"connectionString"`
	TPM              struct {
		RegistrationID string `json:"registrationId"`
		DeviceID       string `json:"deviceId"`
		EndorsementKey string `json:"endorsementKey"`
	} `json:"tpm"`
	Group struct {
		EnrollmentGroupID string `json:"enrollmentGroupId"`
		PrimaryKey        string `json:"primaryKey"`
		SecondaryKey      string `json:"secondaryKey"`
	} `json:"group"`
}

// callResult is one SDK call as service.js reports it.
type callResult struct {
	Body           json.RawMessage `json:"body"`
	Status         int             `json:"status"`
	HasMoreResults *bool           `json:"hasMoreResults"`
	Error          *struct {
		Name    string `json:"name"`
		Message string `json:"message"`
		Status  int    `json:"status"`
	} `json:"error"`
}

// ok fails the test unless the call succeeded with status.
func (c *callResult) ok(t *testing.T, what string, status int) {
	t.Helper()
	if c == nil {
		t.Fatalf("%s: not run", what)
	}
	if c.Error != nil || c.Status != status {
		t.Fatalf("%s: status %d error %+v, want %d", what, c.Status, c.Error, status)
	}
}

// failed fails the test unless the call failed with status.
func (c *callResult) failed(t *testing.T, what string, status int) {
	t.Helper()
	if c == nil || c.Error == nil || c.Error.Status != status {
		t.Fatalf("%s: %+v, want an error with status %d", what, c, status)
	}
}

// enrollmentView is the part of an individual enrollment the test checks.
type enrollmentView struct {
	RegistrationID string `json:"registrationId"`
	DeviceID       string `json:"deviceId"`
	Attestation    struct {
		Type string `json:"type"`
		TPM  *struct {
			EndorsementKey string `json:"endorsementKey"`
		} `json:"tpm"`
	} `json:"attestation"`
	ProvisioningStatus string          `json:"provisioningStatus"`
	InitialTwin        json.RawMessage `json:"initialTwin"`
	ETag               string          `json:"etag"`
}

// groupView is the part of an enrollment group the test checks.
type groupView struct {
	EnrollmentGroupID string `json:"enrollmentGroupId"`
	Attestation       struct {
		Type         string `json:"type"`
		SymmetricKey *struct {
			PrimaryKey string `json:"primaryKey"`
		} `json:"symmetricKey"`
	} `json:"attestation"`
	ETag string `json:"etag"`
}

func decode[T any](t *testing.T, what string, raw json.RawMessage) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: decoding %s: %v", what, raw, err)
	}
	return v
}

// TestServiceClient: azure-iot-provisioning-service's
// ProvisioningServiceClient.fromConnectionString against the service API on
// https://localhost:443 creates, reads, updates (with If-Match), queries and
// deletes a TPM individual enrollment (EK fixture from testdata/tpm) and a
// symmetric-key enrollment group; the store sees each change. Reads and
// queries carry no symmetric key; the SDK's attestation mechanism calls
// return the keys.
func TestServiceClient(t *testing.T) {
	needPorts(t, httpsAddr)
	s := dpsdtest.Start(t, dpsdtest.Options{APIAddr: httpsAddr})
	node := prepareNode(t, s.CACertPEM)
	ekBytes, err := os.ReadFile(filepath.Join("..", "testdata", "tpm", "ek-rsa2048.sim.tpm2b"))
	if err != nil {
		t.Fatal(err)
	}
	spec := serviceSpec{ConnectionString: s.ServiceConnectionString}
	spec.TPM.RegistrationID = "node-tpm-enrollment"
	spec.TPM.DeviceID = "node-tpm-device"
	spec.TPM.EndorsementKey = base64.StdEncoding.EncodeToString(ekBytes)
	spec.Group.EnrollmentGroupID = "node-service-group"
	spec.Group.PrimaryKey = randomKey(t)
	spec.Group.SecondaryKey = randomKey(t)

	spec.Op = "create"
	var created struct {
		CreateEnrollment, GetEnrollment, UpdateEnrollment, StaleUpdateEnrollment, QueryEnrollments *callResult
		CreateGroup, GetGroup, QueryGroups                                                         *callResult
		EnrollmentAttestation, GroupAttestation                                                    *callResult
		ScriptError                                                                                string
	}
	node.run(t, "service.js", spec, &created)
	if created.ScriptError != "" {
		t.Fatalf("service.js: %s", created.ScriptError)
	}
	created.CreateEnrollment.ok(t, "create enrollment", 200)
	created.GetEnrollment.ok(t, "get enrollment", 200)
	got := decode[enrollmentView](t, "get enrollment", created.GetEnrollment.Body)
	if got.RegistrationID != spec.TPM.RegistrationID || got.DeviceID != spec.TPM.DeviceID || got.Attestation.Type != "tpm" ||
		got.Attestation.TPM == nil || got.ProvisioningStatus != "enabled" || got.ETag == "" || len(got.InitialTwin) == 0 {
		t.Fatalf("get enrollment: %s", created.GetEnrollment.Body)
	}
	if ek, err := base64.StdEncoding.DecodeString(got.Attestation.TPM.EndorsementKey); err != nil || len(ek) == 0 {
		t.Fatalf("get enrollment: endorsementKey %q: %v", got.Attestation.TPM.EndorsementKey, err)
	}
	created.UpdateEnrollment.ok(t, "update enrollment with If-Match", 200)
	if u := decode[enrollmentView](t, "update enrollment", created.UpdateEnrollment.Body); u.ProvisioningStatus != "disabled" || u.ETag == got.ETag {
		t.Fatalf("update enrollment: %s (etag before %q)", created.UpdateEnrollment.Body, got.ETag)
	}
	created.StaleUpdateEnrollment.failed(t, "update enrollment with a stale etag", 412)
	created.QueryEnrollments.ok(t, "query enrollments", 200)
	if q := decode[[]enrollmentView](t, "query enrollments", created.QueryEnrollments.Body); len(q) != 1 || q[0].RegistrationID != spec.TPM.RegistrationID {
		t.Fatalf("query enrollments: %s", created.QueryEnrollments.Body)
	}
	if h := created.QueryEnrollments.HasMoreResults; h == nil || *h {
		t.Errorf("query enrollments: hasMoreResults = %v, want false (no x-ms-continuation on the last page)", h)
	}
	created.CreateGroup.ok(t, "create group", 200)
	created.GetGroup.ok(t, "get group", 200)
	g := decode[groupView](t, "get group", created.GetGroup.Body)
	if g.EnrollmentGroupID != spec.Group.EnrollmentGroupID || g.Attestation.Type != "symmetricKey" || g.ETag == "" {
		t.Fatalf("get group: %s", created.GetGroup.Body)
	}
	created.QueryGroups.ok(t, "query groups", 200)
	if q := decode[[]groupView](t, "query groups", created.QueryGroups.Body); len(q) != 1 || q[0].EnrollmentGroupID != spec.Group.EnrollmentGroupID {
		t.Fatalf("query groups: %s", created.QueryGroups.Body)
	}
	for _, c := range []*callResult{created.GetGroup, created.QueryGroups} {
		if bytes.Contains(c.Body, []byte(spec.Group.PrimaryKey)) || bytes.Contains(c.Body, []byte(spec.Group.SecondaryKey)) {
			t.Fatalf("a read carries the group key: %s", c.Body)
		}
	}
	created.EnrollmentAttestation.ok(t, "enrollment attestation mechanism", 200)
	ea := decode[struct {
		Type string `json:"type"`
		TPM  *struct {
			EndorsementKey string `json:"endorsementKey"`
		} `json:"tpm"`
	}](t, "enrollment attestation mechanism", created.EnrollmentAttestation.Body)
	if ea.Type != "tpm" || ea.TPM == nil || ea.TPM.EndorsementKey != got.Attestation.TPM.EndorsementKey {
		t.Fatalf("enrollment attestation mechanism: %s", created.EnrollmentAttestation.Body)
	}
	created.GroupAttestation.ok(t, "group attestation mechanism", 200)
	ga := decode[struct {
		Type         string `json:"type"`
		SymmetricKey *struct {
			PrimaryKey   string `json:"primaryKey"`
			SecondaryKey string `json:"secondaryKey"`
		} `json:"symmetricKey"`
	}](t, "group attestation mechanism", created.GroupAttestation.Body)
	if ga.Type != "symmetricKey" || ga.SymmetricKey == nil || ga.SymmetricKey.PrimaryKey != spec.Group.PrimaryKey || ga.SymmetricKey.SecondaryKey != spec.Group.SecondaryKey {
		t.Fatalf("group attestation mechanism: %s", created.GroupAttestation.Body)
	}

	// The store holds what the SDK wrote.
	ctx := context.Background()
	e, err := s.Store.GetEnrollment(ctx, spec.TPM.RegistrationID)
	if err != nil || e.Attestation.Type != store.AttestationTPM || e.ProvisioningStatus != store.StatusDisabled {
		t.Fatalf("stored enrollment: %+v, %v", e, err)
	}
	sg, err := s.Store.GetGroup(ctx, spec.Group.EnrollmentGroupID)
	if err != nil || sg.Attestation.SymmetricKey == nil || sg.Attestation.SymmetricKey.PrimaryKey != spec.Group.PrimaryKey {
		t.Fatalf("stored group: %+v, %v", sg, err)
	}

	spec.Op = "delete"
	var deleted struct {
		DeleteEnrollment, GetEnrollment, DeleteGroup, GetGroup *callResult
		ScriptError                                            string
	}
	node.run(t, "service.js", spec, &deleted)
	if deleted.ScriptError != "" {
		t.Fatalf("service.js: %s", deleted.ScriptError)
	}
	// The SDK's delete callback carries no response: 0 stands for "no error".
	deleted.DeleteEnrollment.ok(t, "delete enrollment", 0)
	deleted.GetEnrollment.failed(t, "get deleted enrollment", 404)
	deleted.DeleteGroup.ok(t, "delete group with its etag", 0)
	deleted.GetGroup.failed(t, "get deleted group", 404)
	if _, err := s.Store.GetEnrollment(ctx, spec.TPM.RegistrationID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("stored enrollment after delete: %v", err)
	}
	if _, err := s.Store.GetGroup(ctx, spec.Group.EnrollmentGroupID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("stored group after delete: %v", err)
	}
}

// TestAPIPortWebSocket: one HTTPS listener on 443 carries both the service
// API and MQTT over WebSocket (broker.WebSocketHandler), as on the cloud
// service. A symmetric-key group created with the service SDK provisions a
// device over MqttWs with a derived key; an X.509 device (client certificate
// on the API listener) provisions too; wrong credentials are refused.
func TestAPIPortWebSocket(t *testing.T) {
	needPorts(t, httpsAddr)
	s := dpsdtest.Start(t, dpsdtest.Options{APIAddr: httpsAddr, APIWebSocket: true})
	node := prepareNode(t, s.CACertPEM)
	ekBytes, err := os.ReadFile(filepath.Join("..", "testdata", "tpm", "ek-eccp256.sim.tpm2b"))
	if err != nil {
		t.Fatal(err)
	}
	spec := serviceSpec{Op: "create", ConnectionString: s.ServiceConnectionString}
	spec.TPM.RegistrationID = "node-tpm-enrollment-2"
	spec.TPM.EndorsementKey = base64.StdEncoding.EncodeToString(ekBytes)
	spec.Group.EnrollmentGroupID = "node-ws-group"
	spec.Group.PrimaryKey = randomKey(t)
	var created struct {
		CreateEnrollment, CreateGroup *callResult
		ScriptError                   string
	}
	node.run(t, "service.js", spec, &created)
	if created.ScriptError != "" {
		t.Fatalf("service.js: %s", created.ScriptError)
	}
	created.CreateEnrollment.ok(t, "create enrollment", 200)
	created.CreateGroup.ok(t, "create group", 200)

	const regID = "node-ws-group-device"
	res := node.register(t, deviceSpec{Transport: "mqttws", IDScope: s.IDScope, RegistrationID: regID, GroupKey: spec.Group.PrimaryKey})
	wantAssigned(t, res, regID)
	if sk := res.RegistrationState.SymmetricKey; sk == nil || sk.EnrollmentGroupID != spec.Group.EnrollmentGroupID {
		t.Fatalf("registrationState.symmetricKey = %+v, want enrollmentGroupId %q", sk, spec.Group.EnrollmentGroupID)
	}
	wantRecord(t, s, regID, store.AttestationSymmetricKey, spec.Group.EnrollmentGroupID)
	wantRefused(t, node.register(t, deviceSpec{Transport: "mqttws", IDScope: s.IDScope, RegistrationID: "node-ws-group-device-2", GroupKey: randomKey(t)}), "node-ws-group-device-2")

	const x509ID = "node-ws-x509"
	dev := newCert(t, x509ID, nil, false)
	putEnrollment(t, s, &store.Enrollment{
		RegistrationID: x509ID,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
				ClientCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: string(dev.certPEM)}}}},
		},
	})
	ws := x509Spec(s, x509ID, dev)
	ws.Transport = "mqttws"
	wantAssigned(t, node.register(t, ws), x509ID)
	wantRecord(t, s, x509ID, store.AttestationX509, "")
	ws = x509Spec(s, x509ID, newCert(t, x509ID, nil, false))
	ws.Transport = "mqttws"
	wantRefused(t, node.register(t, ws), x509ID)
}
