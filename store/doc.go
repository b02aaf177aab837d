// Package store keeps all provisioning state behind one interface (Store):
// individual enrollments, enrollment groups, registration records,
// polling operations, linked IoT hubs and the provisioning service's
// pending jobs. It holds the interface, the record types and the
// errors, and no engine: the embedded bbolt engine is store/bolt, the cluster
// engine is store/etcd, and store/storetest is the conformance suite
// that every engine passes. This part states what every engine promises;
// each engine's package documents its layout, durability and operations.
//
// # Keys
//
// Registration ids and enrollment group ids are compared
// case-insensitively: an engine keys records by the lowercased id, and the
// record keeps its id as given. Ids are 1..MaxIDLength bytes without NUL;
// others are ErrInvalidID (Get and Delete wrap it together with
// ErrNotFound: no such record can exist). Operation ids are case-sensitive.
//
// # Etags and times
//
// Every write of an enrollment, group or registration sets a new opaque
// etag, unique per write, so an etag from a deleted and recreated record
// never matches. Put and Delete take an If-Match value, bare or HTTP-quoted
// ("..." or W/"..."): "" and "*" are unconditional; any other value must
// equal the stored record's etag or ErrPreconditionFailed results, also
// for a Put of a missing record (which then creates nothing). Delete of a
// missing record is ErrNotFound whatever the etag. A write returns the
// record as stored: its new etag, createdDateTimeUtc kept across updates and
// lastUpdatedDateTimeUtc the write time (UTC). The caller's record is never
// retained or modified.
//
// # Secrets
//
// Symmetric keys (attestation.symmetricKey) and Registration.HubKey are
// secrets: they round-trip through the store, and an engine keeps them
// encrypted at rest. Registration.AttestationHash is stored with its record
// and returned by reads, but, like HubKey, never serialised to JSON (the
// service API's shape).
//
// # Issued certificates
//
// An enrollment's or group's credentialPolicyName and
// dpsdCertificatePolicy, a registration's current and superseded
// certificates and an operation's issued chain are records of
// certificate issuance: public data (certificates and their thumbprints,
// never a key) that round-trips like any other field. The issuing CA's key
// is never in the store.
//
// # Listings and counts
//
// Listings are in key order, one page per call: Query.MaxItems defaults to
// DefaultMaxItems and is capped at MaxMaxItems. A page ends with an empty
// continuation exactly when nothing follows. A continuation token of
// another listing, another group, or garbage gives ErrBadContinuation.
// Writes between pages do not disturb paging: every record that exists
// throughout is seen exactly once. Counts are cheap (kept with the records).
// ListGroupRegistrations and CountGroupRegistrations follow the group a
// registration record names, also after the group is deleted.
//
// # Operations
//
// RecordRegistration writes a registration record and the operation that
// reports it in one durable step: both or neither. GetOperation hides an
// operation from its ExpiresAt on (now >= ExpiresAt); Sweep deletes the
// expired ones. Nothing else expires.
//
// # Enrollment groups
//
// GroupsRevision changes with every PutGroup and DeleteGroup that writes,
// and only then, so that a process that keeps the groups in memory knows
// with one cheap read whether its copy is current. An engine may bound the
// number of groups: PutGroup of a new group beyond the bound returns a
// *LimitError (ErrLimit) and writes nothing.
//
// # Enrollments by endorsement key
//
// EnrollmentIDsByEK finds the TPM enrollments (attestation type tpm) of
// one endorsement key, compared as the bytes its base64 decodes to, from
// an index written in the same transaction as the enrollments, so that the
// service can warn when one TPM is enrolled under a second registration id.
//
// # Linked hubs
//
// LinkedHub records are keyed by the lowercased host name, with etags and
// times like the other records. ConnectionString and Webhook.Secret are
// secrets (kept encrypted at rest, returned by reads). ListLinkedHubs
// returns them all at once (the service API allows MaxLinkedHubs), and
// LinkedHubsRevision changes with every PutLinkedHub and DeleteLinkedHub,
// and only then, so that the provisioning service keeps them in memory
// and knows with one cheap read whether its copy is current.
//
// # Jobs (the provisioning service's outbox)
//
// A Job is work that needs I/O outside the service, written in the same
// durable step as the operation it completes (EnqueueJob: both or
// neither), and deleted in the same durable step as the registration and
// final operation it records (FinishJob). Between the two, a job is
// pending (due at NotBefore) or leased: ClaimJobs leases due jobs, the
// earliest due first, to one owner until now+lease; a job is leased to one
// owner at a time, and another owner can claim it only once the lease has
// expired. ReleaseJob (pending again, with the progress written) and
// FinishJob succeed only for the owner that holds the job; any other gets
// ErrPreconditionFailed and nothing is written, so a worker that lost its
// lease can never record a second outcome. Job.Secret is a secret (kept
// encrypted at rest). Jobs do not expire: Sweep leaves them alone.
// EnqueueJob with maxPending bounds the number of jobs (a *LimitError,
// nothing written). An engine that can prove that no lease holder is alive
// (one process per file, as bbolt) may end leases when it opens; an engine
// shared by several processes (a cluster) must keep them until they
// expire, by the store's clock.
//
// # Capabilities of some engines
//
// An engine may also implement EnrollmentBatcher (many enrollments in one
// transaction: bbolt), ChallengeRecorder (the single use of TPM challenges
// recorded for every node of a cluster: etcd), WindowCounter (rate-limit
// windows counted for a cluster: etcd) and RegistrationLister (every
// registration record: both, for dpsd store copy). A store that cannot
// answer now (a cluster without quorum) returns errors wrapping
// ErrUnavailable: nothing was decided, the caller may retry.
//
// # Durability and concurrency
//
// Every method is safe for concurrent use. Every write returns after it is
// durable: an acknowledged write survives a crash. Backup writes a
// consistent copy of the whole store, from which the engine can restore.
// Close waits for calls in flight; later calls return ErrClosed.
package store
