package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Errors returned by every Store implementation. Callers test them with errors.Is.
var (
	// ErrNotFound: no record with that key.
	ErrNotFound = errors.New("store: not found")
	// ErrPreconditionFailed: the If-Match etag does not match the stored record
	// (or the record does not exist when an etag was given).
	ErrPreconditionFailed = errors.New("store: etag does not match")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("store: closed")
	// ErrLimit: a write would create a record beyond a limit of the store
	// (the number of enrollment groups). Errors wrapping it are *LimitError.
	ErrLimit = errors.New("store: limit reached")
	// ErrInvalidID: an id is empty, longer than MaxIDLength or contains a
	// NUL byte. Get and Delete wrap it together with ErrNotFound (no such
	// record can exist).
	ErrInvalidID = errors.New("store: invalid id")
	// ErrInvalidRecord: a record cannot be stored (nil, missing expiry, bad
	// JSON in InitialTwin or Payload).
	ErrInvalidRecord = errors.New("store: invalid record")
	// ErrBadContinuation: a continuation token was not issued by this listing.
	ErrBadContinuation = errors.New("store: bad continuation token")
	// ErrCorrupt: a stored value could not be decoded or authenticated
	// (tampering, a swapped ciphertext, or a wrong key).
	ErrCorrupt = errors.New("store: corrupt record")
	// ErrUnavailable: the store cannot answer now (a cluster engine lost
	// its connection or the quorum of its cluster); nothing was decided
	// and the caller may try again (503, CONNACK "server unavailable").
	ErrUnavailable = errors.New("store: unavailable")
	// ErrChallengeUsed: ChallengeRecorder.UseChallenge found the challenge
	// already used.
	ErrChallengeUsed = errors.New("store: challenge already used")
)

// Bounds every Store applies.
const (
	// DefaultMaxItems is the page size of a listing when Query.MaxItems is 0.
	DefaultMaxItems = 100
	// MaxMaxItems caps Query.MaxItems.
	MaxMaxItems = 1000
	// MaxIDLength bounds registration, group and operation ids (bytes).
	MaxIDLength = 512
)

// LimitError reports a write refused because it would exceed a limit of
// the store, such as the bbolt engine's Options.MaxGroups. It wraps ErrLimit.
type LimitError struct {
	What  string // what is limited, plural: "enrollment groups"
	Limit int    // how many may exist
}

// Error names the limit.
func (e *LimitError) Error() string {
	return fmt.Sprintf("%v: at most %d %s may exist", ErrLimit, e.Limit, e.What)
}

// Unwrap returns ErrLimit.
func (e *LimitError) Unwrap() error { return ErrLimit }

// Attestation types, as in the DPS service API.
const (
	AttestationTPM          = "tpm"
	AttestationSymmetricKey = "symmetricKey"
	AttestationX509         = "x509"
)

// Provisioning statuses of enrollments and groups.
const (
	StatusEnabled  = "enabled"
	StatusDisabled = "disabled"
)

// Registration statuses (registrationState.status).
const (
	RegistrationUnassigned = "unassigned"
	RegistrationAssigning  = "assigning"
	RegistrationAssigned   = "assigned"
	RegistrationFailed     = "failed"
	RegistrationDisabled   = "disabled"
)

// Enrollment is an individual enrollment, keyed by its lowercased registrationId.
// JSON names follow the DPS service API; the JSON is flat (the fields of
// EnrollmentSettings sit beside registrationId and deviceId).
type Enrollment struct {
	RegistrationID string `json:"registrationId"`
	DeviceID       string `json:"deviceId,omitempty"`
	EnrollmentSettings
}

// Group is an enrollment group (symmetric key or X.509 CA), keyed by its
// lowercased EnrollmentGroupID. Its JSON is flat like Enrollment's.
type Group struct {
	EnrollmentGroupID string `json:"enrollmentGroupId"`
	EnrollmentSettings
}

// EnrollmentSettings is what an individual enrollment and an enrollment
// group share: how their devices attest, where they are allocated and how
// they are provisioned, and the record's etag and times. Both embed it, so
// code that applies to either (allocation, validation, the API's writes)
// takes an *EnrollmentSettings.
type EnrollmentSettings struct {
	Attestation                Attestation                 `json:"attestation"`
	IoTHubHostName             string                      `json:"iotHubHostName,omitempty"`
	IoTHubs                    []string                    `json:"iotHubs,omitempty"`
	AllocationPolicy           string                      `json:"allocationPolicy,omitempty"`
	ProvisioningStatus         string                      `json:"provisioningStatus,omitempty"`
	InitialTwin                json.RawMessage             `json:"initialTwin,omitempty"`
	Capabilities               *Capabilities               `json:"capabilities,omitempty"`
	ReprovisionPolicy          *ReprovisionPolicy          `json:"reprovisionPolicy,omitempty"`
	CustomAllocationDefinition *CustomAllocationDefinition `json:"customAllocationDefinition,omitempty"`
	ETag                       string                      `json:"etag,omitempty"`
	CreatedAt                  time.Time                   `json:"createdDateTimeUtc"`
	UpdatedAt                  time.Time                   `json:"lastUpdatedDateTimeUtc"`
	// CredentialPolicyName, when set, has the service issue an operational
	// certificate to a device that sends a certificate signing request in
	// its register request (the field of the DPS 2025-07-01-preview service
	// API, where it names a credential policy). dpsd has one issuer (its
	// issuer setting): any name turns issuance on and is kept as a label.
	CredentialPolicyName string `json:"credentialPolicyName,omitempty"`
	// CertificatePolicy is dpsd's extension of issuance: the validity and
	// subject of the certificates issued. nil means the defaults.
	CertificatePolicy *CertificatePolicy `json:"dpsdCertificatePolicy,omitempty"`
}

// Attestation says how a device proves its identity. Exactly one of TPM,
// SymmetricKey and X509 is set, matching Type.
type Attestation struct {
	Type         string                   `json:"type"`
	TPM          *TPMAttestation          `json:"tpm,omitempty"`
	SymmetricKey *SymmetricKeyAttestation `json:"symmetricKey,omitempty"`
	X509         *X509Attestation         `json:"x509,omitempty"`
}

// TPMAttestation is, for an individual enrollment, the enrolled
// endorsement key (base64 TPM2B_PUBLIC) and whether the device must also
// show a valid EK certificate; for an enrollment group (attestation type
// tpm, an extension of this service), which EK certificates admit a TPM:
// those that chain to one of EKCertificateRoots, optionally only of one
// TPM manufacturer or model, or only for the EKs of an allow-list.
// Certificates and CRLs are PEM or base64 DER, one per string.
type TPMAttestation struct {
	EndorsementKey string `json:"endorsementKey,omitempty"`
	StorageRootKey string `json:"storageRootKey,omitempty"`
	// RequireEKCertificate (individual enrollments): the device must send
	// an EK certificate for its EK that chains to the service's TPM roots.
	RequireEKCertificate bool `json:"requireEkCertificate,omitempty"`
	// EKCertificateRoots (groups, required there) are the trust anchors.
	EKCertificateRoots []string `json:"ekCertificateRoots,omitempty"`
	// EKCertificateIntermediates are extra paths to those roots.
	EKCertificateIntermediates []string `json:"ekCertificateIntermediates,omitempty"`
	// EKCertificateCRLs are revocation lists of those CAs.
	EKCertificateCRLs []string `json:"ekCertificateCrls,omitempty"`
	// TPMManufacturer and TPMModel, when set, must equal the certificate's
	// (its subject alternative name, e.g. "id:494E5443"; case-insensitive).
	TPMManufacturer string `json:"tpmManufacturer,omitempty"`
	TPMModel        string `json:"tpmModel,omitempty"`
	// EndorsementKeyHashes, when set, admit only these EKs: hexadecimal
	// SHA-256 of the EK's DER SubjectPublicKeyInfo (attest.EKHash).
	EndorsementKeyHashes []string `json:"endorsementKeyHashes,omitempty"`
}

// SymmetricKeyAttestation holds base64 keys. They are secrets: encrypted at rest.
type SymmetricKeyAttestation struct {
	PrimaryKey   string `json:"primaryKey,omitempty"`
	SecondaryKey string `json:"secondaryKey,omitempty"`
}

// X509Attestation pins client certificates (individual enrollments), or names
// signing certificates or CA references (groups).
type X509Attestation struct {
	ClientCertificates  *X509Certificates `json:"clientCertificates,omitempty"`
	SigningCertificates *X509Certificates `json:"signingCertificates,omitempty"`
	CAReferences        *X509CAReferences `json:"caReferences,omitempty"`
}

// X509Certificates is a primary and optional secondary certificate.
type X509Certificates struct {
	Primary   *X509CertificateWithInfo `json:"primary,omitempty"`
	Secondary *X509CertificateWithInfo `json:"secondary,omitempty"`
}

// X509CertificateWithInfo is a PEM or base64 DER certificate and what was read from it.
type X509CertificateWithInfo struct {
	Certificate string               `json:"certificate,omitempty"`
	Info        *X509CertificateInfo `json:"info,omitempty"`
}

// X509CertificateInfo describes a certificate as the DPS API reports it.
type X509CertificateInfo struct {
	SubjectName      string    `json:"subjectName"`
	SHA1Thumbprint   string    `json:"sha1Thumbprint"`
	SHA256Thumbprint string    `json:"sha256Thumbprint"`
	IssuerName       string    `json:"issuerName"`
	NotBefore        time.Time `json:"notBeforeUtc"`
	NotAfter         time.Time `json:"notAfterUtc"`
	SerialNumber     string    `json:"serialNumber"`
	Version          int       `json:"version"`
}

// CertificatePolicy says what the operational certificates issued to an
// enrollment's or a group's devices contain beyond what every issued
// certificate has (the registration id as subject CN, a URI SAN naming the
// device, clientAuth). A dpsd extension: the cloud keeps these settings in
// the credential policy that credentialPolicyName names.
type CertificatePolicy struct {
	// ValidityDays is how long an issued certificate is valid, in days
	// (1-398; 0 means the default, 30).
	ValidityDays int `json:"validityDays,omitempty"`
	// Organization, when set, is the subject O of issued certificates.
	Organization string `json:"organization,omitempty"`
	// OrganizationalUnit, when set, is the subject OU of issued certificates.
	OrganizationalUnit string `json:"organizationalUnit,omitempty"`
}

// Bounds of CertificatePolicy.ValidityDays, in days: the default (the
// cloud's), and the range (398 days is the longest any public TLS
// certificate may live).
const (
	DefaultCertificateValidityDays = 30
	MinCertificateValidityDays     = 1
	MaxCertificateValidityDays     = 398
)

// X509CAReferences names CA certificates registered with the service.
type X509CAReferences struct {
	Primary   string `json:"primary,omitempty"`
	Secondary string `json:"secondary,omitempty"`
}

// Capabilities of the device (DPS API).
type Capabilities struct {
	IoTEdge bool `json:"iotEdge"`
}

// ReprovisionPolicy says what happens when an assigned device registers again.
type ReprovisionPolicy struct {
	UpdateHubAssignment bool `json:"updateHubAssignment"`
	MigrateDeviceData   bool `json:"migrateDeviceData"`
}

// CustomAllocationDefinition names a webhook for custom allocation. The
// webhook URL may carry a function key (?code=...): the service API and the
// allocation request mask its query as "?****". The dpsd* fields are dpsd
// extensions the cloud service does not have.
type CustomAllocationDefinition struct {
	WebhookURL string `json:"webhookUrl"`
	APIVersion string `json:"apiVersion"`
	// TimeoutSeconds bounds one call of the webhook (0: the service's
	// default).
	TimeoutSeconds int `json:"dpsdTimeoutSeconds,omitempty"`
	// FallbackPolicy is what a registration gets when the webhook cannot be
	// reached or keeps failing with 429 or 5xx until the service gives up:
	// FallbackRefuse ("" too: the registration fails, as in the cloud) or
	// FallbackHashed (a hashed allocation across the request's linked hubs).
	FallbackPolicy string `json:"dpsdFallbackPolicy,omitempty"`
	// ClientCertificate names the client certificate presented to a
	// webhook that asks for one (mutual TLS): one of the server's
	// outbound-client-certs ("": the server's outbound-client-cert, if any).
	ClientCertificate string `json:"dpsdClientCertificate,omitempty"`
}

// Fallback policies of a custom allocation webhook.
const (
	FallbackRefuse = "refuse"
	FallbackHashed = "hashed"
)

// Registration is the record of a device's registration, keyed by its
// lowercased registrationId.
type Registration struct {
	RegistrationID    string          `json:"registrationId"`
	Status            string          `json:"status"`
	Substatus         string          `json:"substatus,omitempty"`
	AssignedHub       string          `json:"assignedHub,omitempty"`
	DeviceID          string          `json:"deviceId,omitempty"`
	ErrorCode         int             `json:"errorCode,omitempty"`
	ErrorMessage      string          `json:"errorMessage,omitempty"`
	AttestationType   string          `json:"attestationType,omitempty"`
	EnrollmentGroupID string          `json:"enrollmentGroupId,omitempty"`
	Payload           json.RawMessage `json:"payload,omitempty"`
	// HubKey is the device's long-term key for its hub. A secret: encrypted at
	// rest and never serialised by the service API.
	HubKey []byte `json:"-"`
	// AttestationHash identifies the attestation this record (and its
	// HubKey) was issued for: a SHA-256 the provisioning service computes
	// from the EK, the symmetric key or the certificates, never the key
	// itself. Nil on records written before it was recorded. Stored with the
	// record, never serialised by the service API.
	AttestationHash []byte    `json:"-"`
	ETag            string    `json:"etag,omitempty"`
	CreatedAt       time.Time `json:"createdDateTimeUtc"`
	UpdatedAt       time.Time `json:"lastUpdatedDateTimeUtc"`
	// Certificate describes the operational certificate last issued to the
	// device (a dpsd extension of the registration state); nil when none was.
	Certificate *X509CertificateInfo `json:"dpsdIssuedCertificate,omitempty"`
	// SupersededCertificates are the certificates issued earlier and
	// replaced by a later one, newest first, at most
	// MaxSupersededCertificates (a dpsd extension). Nothing revokes them:
	// they stay valid until they expire.
	SupersededCertificates []SupersededCertificate `json:"dpsdSupersededCertificates,omitempty"`
}

// MaxSupersededCertificates bounds Registration.SupersededCertificates:
// the service keeps the newest ones.
const MaxSupersededCertificates = 16

// SupersededCertificate is an issued certificate that a later one replaced.
type SupersededCertificate struct {
	SerialNumber     string    `json:"serialNumber"`
	SHA256Thumbprint string    `json:"sha256Thumbprint"`
	NotAfter         time.Time `json:"notAfterUtc"`
	SupersededAt     time.Time `json:"supersededDateTimeUtc"`
}

// Register request fields that carry a certificate signing request; an
// Operation's CSRField names the one the device used.
const (
	// CSRField2025 is the 2025-07-01-preview field "csr"; the answer is
	// registrationState.issuedCertificateChain.
	CSRField2025 = "csr"
	// CSRField2021 is the 2021-11-01-preview field "clientCertificateCsr";
	// the answer is registrationState.issuedClientCertificate.
	CSRField2021 = "clientCertificateCsr"
)

// Operation is what a device polls for after a register request.
type Operation struct {
	ID             string `json:"operationId"`
	RegistrationID string `json:"registrationId"`
	// Status is assigning, assigned, failed or disabled.
	Status       string `json:"status"`
	ErrorCode    int    `json:"errorCode,omitempty"`
	ErrorMessage string `json:"errorMessage,omitempty"`
	// AuthenticationKey is the TPM activation blob of the final answer (it is
	// encrypted to the device's TPM, so it reveals nothing at rest).
	AuthenticationKey []byte    `json:"authenticationKey,omitempty"`
	CreatedAt         time.Time `json:"createdAt"`
	ExpiresAt         time.Time `json:"expiresAt"`
	// IssuedCertificateChain is the certificate chain issued with this
	// operation, DER, leaf first, root last (public, not a secret).
	IssuedCertificateChain [][]byte `json:"issuedCertificateChain,omitempty"`
	// CSRField is the register field that carried the CSR (CSRField2025 or
	// CSRField2021): the final answer carries the chain in the matching shape.
	CSRField string `json:"csrField,omitempty"`
}

// Query asks for one page of a listing.
type Query struct {
	// MaxItems bounds the page; 0 means the implementation's default (100).
	MaxItems int
	// Continuation is the token of the previous page, "" for the first.
	Continuation string
}

// Page is one page of a listing. Continuation is "" on the last page.
type Page[T any] struct {
	Items        []T
	Continuation string
}

// Store is the provisioning service's state. Every method is safe for
// concurrent use; every acknowledged write is durable. Keys (registration ids,
// group ids) are compared case-insensitively: implementations lowercase them.
// Put and Delete take an ifMatch etag: "" or "*" means unconditional; any other
// value must equal the stored record's etag or ErrPreconditionFailed results.
// Put returns the record as stored, with its new etag and times. PutGroup
// of a new group beyond the store's group limit returns a *LimitError
// (ErrLimit) and writes nothing.
type Store interface {
	GetEnrollment(ctx context.Context, registrationID string) (*Enrollment, error)
	PutEnrollment(ctx context.Context, e *Enrollment, ifMatch string) (*Enrollment, error)
	DeleteEnrollment(ctx context.Context, registrationID, ifMatch string) error
	ListEnrollments(ctx context.Context, q Query) (Page[*Enrollment], error)
	CountEnrollments(ctx context.Context) (int, error)
	// EnrollmentIDsByEK returns the registration ids (lowercased, in
	// order) of the TPM enrollments whose endorsement key (base64) decodes
	// to the same bytes as ek, from an index kept in the same write as the
	// enrollments: one cheap read, whatever the number of enrollments.
	EnrollmentIDsByEK(ctx context.Context, ek string) ([]string, error)

	GetGroup(ctx context.Context, groupID string) (*Group, error)
	PutGroup(ctx context.Context, g *Group, ifMatch string) (*Group, error)
	DeleteGroup(ctx context.Context, groupID, ifMatch string) error
	ListGroups(ctx context.Context, q Query) (Page[*Group], error)
	CountGroups(ctx context.Context) (int, error)
	// GroupsRevision returns a number that changes with every write of an
	// enrollment group (PutGroup and DeleteGroup bump it in the same
	// transaction), and only then, so that a reader that keeps groups in
	// memory knows with one cheap read whether its copy is current, also
	// when other processes write the store. It never goes back while the
	// store is open.
	GroupsRevision(ctx context.Context) (uint64, error)

	GetRegistration(ctx context.Context, registrationID string) (*Registration, error)
	DeleteRegistration(ctx context.Context, registrationID, ifMatch string) error
	ListGroupRegistrations(ctx context.Context, groupID string, q Query) (Page[*Registration], error)
	CountGroupRegistrations(ctx context.Context, groupID string) (int, error)

	// RecordRegistration writes a registration record and the operation that
	// reports it in one durable step, and returns the record as stored.
	RecordRegistration(ctx context.Context, r *Registration, op *Operation) (*Registration, error)
	// PutOperation writes an operation (for example one still assigning).
	PutOperation(ctx context.Context, op *Operation) error
	// GetOperation returns an unexpired operation or ErrNotFound.
	GetOperation(ctx context.Context, operationID string) (*Operation, error)

	// GetLinkedHub returns a linked IoT hub by its host name (compared
	// case-insensitively), connection string and webhook secret included.
	GetLinkedHub(ctx context.Context, name string) (*LinkedHub, error)
	// PutLinkedHub creates or replaces a linked hub under ifMatch.
	PutLinkedHub(ctx context.Context, h *LinkedHub, ifMatch string) (*LinkedHub, error)
	// DeleteLinkedHub deletes a linked hub under ifMatch.
	DeleteLinkedHub(ctx context.Context, name, ifMatch string) error
	// ListLinkedHubs returns every linked hub, secrets included, in key
	// order (there are few: the service API allows MaxLinkedHubs).
	ListLinkedHubs(ctx context.Context) ([]*LinkedHub, error)
	// LinkedHubsRevision returns a number that changes with every write of
	// a linked hub (PutLinkedHub and DeleteLinkedHub bump it in the same
	// transaction), and only then, as GroupsRevision does for groups.
	LinkedHubsRevision(ctx context.Context) (uint64, error)

	// EnqueueJob writes op (an operation still assigning) and job, pending
	// and unowned, in one durable step: both or neither. With maxPending >
	// 0, when that many jobs exist it writes nothing and returns a
	// *LimitError (ErrLimit). A job with the id of an existing job replaces
	// it.
	EnqueueJob(ctx context.Context, op *Operation, job *Job, maxPending int) error
	// ClaimJobs leases to owner, until now+lease, up to max jobs that are
	// due (NotBefore at or before now) and not leased to anyone (or whose
	// lease has expired), and returns them as stored with Owner and
	// LeaseExpires set, secrets included, the earliest due first. A job is
	// leased to one owner at a time.
	ClaimJobs(ctx context.Context, owner string, lease time.Duration, max int) ([]*Job, error)
	// ReleaseJob ends job.Owner's lease of job.ID and writes job's Data,
	// Secret, Attempts and NotBefore: the job is pending again, due at
	// NotBefore. ErrPreconditionFailed (nothing written) when job.Owner no
	// longer holds the job (another owner claimed it after the lease
	// expired) or the job no longer exists.
	ReleaseJob(ctx context.Context, job *Job) error
	// FinishJob completes a job owner holds, in one durable step: it
	// records r (unless nil) as RecordRegistration does, writes op and
	// deletes the job. ErrPreconditionFailed (nothing written) when owner
	// no longer holds the job or it no longer exists.
	FinishJob(ctx context.Context, jobID, owner string, r *Registration, op *Operation) (*Registration, error)
	// CountJobs returns the number of jobs (pending and leased).
	CountJobs(ctx context.Context) (int, error)

	// Sweep deletes the operations that expired at or before now, returning how many.
	Sweep(ctx context.Context, now time.Time) (int, error)
	// Backup writes a consistent copy of the whole store to w.
	Backup(ctx context.Context, w io.Writer) (int64, error)
	// Close releases the store; later calls return ErrClosed.
	Close() error
}

// EnrollmentBatcher is implemented by engines that write many enrollments in
// one transaction: one durable write for a whole bulk import instead of one
// per enrollment. The writes are unconditional and all or nothing (one
// invalid record writes none); of duplicate ids the last wins; each record
// is returned as PutEnrollment returns it, in the order given.
type EnrollmentBatcher interface {
	PutEnrollments(ctx context.Context, es []*Enrollment) ([]*Enrollment, error)
}

// ChallengeRecorder is implemented by engines that several service nodes
// share (a cluster): the single use of a TPM challenge is recorded in the
// store, so that a challenge issued by any node is accepted by every node,
// also after a restart, and authenticates at most once cluster-wide. An
// engine of one process (bbolt) does not implement it: the provisioning
// service then remembers used challenges in its own memory.
type ChallengeRecorder interface {
	// UseChallenge records that the challenge id (opaque bytes, at most
	// 64) authenticated, and returns ErrChallengeUsed when it was recorded
	// before, by this or any other node. The record is kept at least until
	// expires, the challenge's own expiry, after which no node accepts it.
	UseChallenge(ctx context.Context, id []byte, expires time.Time) error
}

// WindowCounter is implemented by engines that several service nodes
// share: a count per name and fixed time window, shared by every node, so
// that a rate limit holds for the whole cluster however a load balancer
// spreads the requests.
type WindowCounter interface {
	// CountInWindow adds one to the counter of name in the current window
	// (the engine's clock cut into windows of length window since the Unix
	// epoch) and returns the count, this one included, and the end of the
	// window.
	CountInWindow(ctx context.Context, name string, window time.Duration) (int64, time.Time, error)
}

// RegistrationLister is implemented by engines that list every
// registration record, in or out of a group: what moving an installation
// to another engine (dpsd store copy) and its check need.
type RegistrationLister interface {
	// ListRegistrations returns one page of every registration, in key
	// order, paged like the other listings.
	ListRegistrations(ctx context.Context, q Query) (Page[*Registration], error)
	// CountRegistrations returns the number of registration records.
	CountRegistrations(ctx context.Context) (int, error)
}
