// Package storetest is the conformance suite of store.Store: Run exercises
// every behaviour the store package documents against one engine, so that
// every engine (store/bolt today, a cluster engine later) is held to the same
// contract. It uses only the store.Store interface and the callbacks of
// Engine, never an engine's internals; what only one engine does (its file
// layout, encryption at rest on disk, schema upgrades) is tested beside that
// engine.
//
// An engine's test runs the suite with real storage:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, storetest.Engine{Open: ..., Reopen: ..., Restore: ...})
//	}
//
// The fixtures (FullEnrollment, FullGroup, FullRegistration, FullOperation,
// Clock) are exported for an engine's own tests.
package storetest

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/store"
)

// Engine is what the suite needs of the engine under test. Open, Reopen and
// Restore are required; Check is optional.
type Engine struct {
	// Open returns a new, empty store that reads opts.Now for record times
	// and expiry checks, and allows at most opts.MaxGroups enrollment groups
	// (0: no limit). The engine closes it at the end of the test (a second
	// Close, after the suite's own, returns store.ErrClosed: ignore it).
	Open func(t *testing.T, opts Options) store.Store
	// Reopen returns a store over the same data as s, which the suite has
	// closed, with the same options.
	Reopen func(t *testing.T, s store.Store) store.Store
	// Restore returns a store over what s.Backup wrote (backup), restored
	// the way the engine documents for operators.
	Restore func(t *testing.T, s store.Store, backup []byte) store.Store
	// Check, when not nil, checks the engine's own invariants of the open
	// store s (the bbolt engine compares its indexes with its records). The
	// suite calls it at the end of every test that writes.
	Check func(t *testing.T, s store.Store)
}

// Options configures a store opened for one test.
type Options struct {
	// Now is the store's clock.
	Now func() time.Time
	// MaxGroups bounds the number of enrollment groups (0: no limit).
	MaxGroups int
}

// Run runs every conformance test against e, each as a subtest with a
// fresh store.
func Run(t *testing.T, e Engine) {
	if e.Open == nil || e.Reopen == nil || e.Restore == nil {
		t.Fatal("storetest: Engine needs Open, Reopen and Restore")
	}
	s := &suite{e: e}
	for _, c := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"EnrollmentRoundTrip", s.enrollmentRoundTrip},
		{"GroupRoundTrip", s.groupRoundTrip},
		{"RegistrationAndOperation", s.registrationAndOperation},
		{"ETags", s.etags},
		{"InvalidInput", s.invalidInput},
		{"RecordRegistrationIsAtomic", s.recordRegistrationIsAtomic},
		{"Paging", s.paging},
		{"PagingUnderWrites", s.pagingUnderWrites},
		{"BadContinuation", s.badContinuation},
		{"OperationExpiryAndSweep", s.operationExpiryAndSweep},
		{"GroupsRevision", s.groupsRevision},
		{"GroupLimit", s.groupLimit},
		{"BulkEnrollments", s.bulkEnrollments},
		{"EnrollmentsByEK", s.enrollmentsByEK},
		{"LinkedHubs", s.linkedHubs},
		{"JobLifecycle", s.jobLifecycle},
		{"JobLimit", s.jobLimit},
		{"ConcurrentClaims", s.concurrentClaims},
		{"IssuedCertificates", s.issuedCertificates},
		{"Backup", s.backup},
		{"Close", s.close},
		{"ConcurrentWriters", s.concurrentWriters},
		{"ChallengeRecorder", s.challengeRecorder},
		{"WindowCounter", s.windowCounter},
		{"RegistrationLister", s.registrationLister},
	} {
		t.Run(c.name, c.fn)
	}
}

// suite holds the engine for the tests.
type suite struct{ e Engine }

// open returns a fresh store with a test clock.
func (s *suite) open(t *testing.T, clock *Clock) store.Store {
	t.Helper()
	opts := Options{}
	if clock != nil {
		opts.Now = clock.Now
	} else {
		opts.Now = time.Now
	}
	return s.e.Open(t, opts)
}

// check runs the engine's own check, if any.
func (s *suite) check(t *testing.T, st store.Store) {
	t.Helper()
	if s.e.Check != nil {
		s.e.Check(t, st)
	}
}

// Clock is the settable clock of the suite's tests (testkit.Clock); use
// NewClock.
type Clock = testkit.Clock

// NewClock returns a clock at a fixed instant with nanoseconds, so that a
// store that loses precision is noticed.
func NewClock() *Clock {
	return testkit.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC))
}

// FullEnrollment returns an enrollment with every field set (symmetric
// keys, TPM keys and certificates at once: the store does not validate
// what the API would refuse).
func FullEnrollment(id string) *store.Enrollment {
	return &store.Enrollment{
		RegistrationID: id,
		DeviceID:       "dev-" + id,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{
				Type:         store.AttestationSymmetricKey,
				SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: "cHJpbWFyeS1zZWNyZXQta2V5LTAxMjM0NTY3ODkwMTIz", SecondaryKey: "c2Vjb25kYXJ5LXNlY3JldC1rZXktOTg3NjU0MzIxMDk4"},
				TPM: &store.TPMAttestation{EndorsementKey: "AToAAQALAAMAsgAg", StorageRootKey: "AToAAQALAAMAcgAA",
					RequireEKCertificate: true, EKCertificateRoots: []string{"MIIR", "-----BEGIN CERTIFICATE-----\nMIIS\n-----END CERTIFICATE-----\n"},
					EKCertificateIntermediates: []string{"MIII"}, EKCertificateCRLs: []string{"MIIC"},
					TPMManufacturer: "id:494E5443", TPMModel: "SLB9670",
					EndorsementKeyHashes: []string{"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}},
				X509: &store.X509Attestation{
					ClientCertificates: &store.X509Certificates{
						Primary: &store.X509CertificateWithInfo{Certificate: "MIIB", Info: &store.X509CertificateInfo{
							SubjectName: "CN=dev", SHA1Thumbprint: "AA", SHA256Thumbprint: "BB", IssuerName: "CN=ca",
							NotBefore: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
							SerialNumber: "01", Version: 3}},
						Secondary: &store.X509CertificateWithInfo{Certificate: "MIIC"},
					},
					SigningCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: "MIID"}},
					CAReferences:        &store.X509CAReferences{Primary: "ca1", Secondary: "ca2"},
				},
			},
			IoTHubHostName:             "hub1.example.net",
			IoTHubs:                    []string{"hub1.example.net", "hub2.example.net"},
			AllocationPolicy:           "hashed",
			ProvisioningStatus:         store.StatusEnabled,
			InitialTwin:                json.RawMessage(`{"tags":{"a":1},"properties":{"desired":{"b":"c"}}}`),
			Capabilities:               &store.Capabilities{IoTEdge: true},
			ReprovisionPolicy:          &store.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true},
			CustomAllocationDefinition: &store.CustomAllocationDefinition{WebhookURL: "https://alloc.example/x?code=k", APIVersion: "2019-03-31", TimeoutSeconds: 7, FallbackPolicy: store.FallbackHashed},
			CredentialPolicyName:       "policy-1",
			CertificatePolicy:          &store.CertificatePolicy{ValidityDays: 90, Organization: "Example Org", OrganizationalUnit: "Line 3"},
		},
	}
}

// FullGroup returns an enrollment group with every field set (disabled).
func FullGroup(id string) *store.Group {
	g := &store.Group{EnrollmentGroupID: id, EnrollmentSettings: FullEnrollment(id).EnrollmentSettings}
	g.ProvisioningStatus = store.StatusDisabled
	return g
}

// FullRegistration returns a registration record with every field set,
// HubKey and AttestationHash included; group may be "".
func FullRegistration(id, group string) *store.Registration {
	return &store.Registration{
		RegistrationID: id, Status: store.RegistrationAssigned, Substatus: "initialAssignment", AssignedHub: "hub1.example.net",
		DeviceID: "dev-" + id, ErrorCode: 400209, ErrorMessage: "none", AttestationType: store.AttestationTPM,
		EnrollmentGroupID: group, Payload: json.RawMessage(`{"x":[1,2,3]}`),
		HubKey:          []byte("hub-key-secret-0123456789abcdef!"),
		AttestationHash: []byte("attestation-hash-0123456789abcde"),
		Certificate: &store.X509CertificateInfo{
			SubjectName: "CN=" + id, SHA1Thumbprint: "A1", SHA256Thumbprint: "B2", IssuerName: "CN=dpsd issuing CA",
			NotBefore: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2026, 1, 31, 0, 0, 0, 0, time.UTC),
			SerialNumber: "0C", Version: 3},
		SupersededCertificates: []store.SupersededCertificate{{SerialNumber: "0B", SHA256Thumbprint: "B1",
			NotAfter: time.Date(2025, 12, 31, 0, 0, 0, 0, time.UTC), SupersededAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}},
	}
}

// FullOperation returns an operation with every field set, expiring at exp.
func FullOperation(id, reg string, exp time.Time) *store.Operation {
	return &store.Operation{ID: id, RegistrationID: reg, Status: store.RegistrationAssigned, ErrorCode: 401002, ErrorMessage: "msg",
		AuthenticationKey: []byte{1, 2, 3, 4, 5}, CreatedAt: exp.Add(-time.Minute).UTC(), ExpiresAt: exp.UTC(),
		IssuedCertificateChain: [][]byte{{0x30, 1}, {0x30, 2}, {0x30, 3}}, CSRField: store.CSRField2025}
}

// SameJSON fails t unless got and want have the same JSON form.
func SameJSON(t testing.TB, what string, got, want any) {
	t.Helper()
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	w, err := json.Marshal(want)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !bytes.Equal(g, w) {
		t.Fatalf("%s:\n got %s\nwant %s", what, g, w)
	}
}
