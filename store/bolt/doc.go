// Package bolt is the embedded Store engine: one bbolt file and a data key
// file (Open). It implements store.Store and passes store/storetest; this
// documentation describes the engine for operators and reviewers, the
// contract every engine keeps is the store package's.
//
// One process owns the database file: bbolt takes an exclusive flock when it
// opens it, and Open waits Options.Timeout (default 5 s) for it, then
// fails with ErrLocked naming the file. Two replicas cannot share one file or
// one volume's copy of it; a distributed engine is for that.
//
// # Files
//
//	dpsd.db      the bbolt database, mode 0600
//	dpsd.db.key  the data key: exactly 32 random bytes (AES-256), mode 0600
//
// The key file is created (crypto/rand, written to a temporary file, synced,
// then linked into place) on the first open of a new database, and checked
// on every open: it must be a regular file of exactly 32 bytes with no
// group or other permission bits, and it must be the key of that database
// (meta/keycheck). A database that already holds a key check refuses to open
// without its key file instead of creating a new one. Back the key file up
// separately from the database: a copied database alone reveals no secret,
// and without the key the secrets in it are lost.
//
// # Buckets, keys and values (schema version 4)
//
//	meta           "version"  -> uint64 big-endian schema version (4)
//	               "keycheck" -> HMAC-SHA256(key, "dpsd store key check v1")[:16]
//	               "groupsrev" -> uint64 big-endian, +1 with every group write (absent: 0)
//	               "hubsrev"  -> uint64 big-endian, +1 with every linked hub write (absent: 0)
//	enrollments    lower(registrationId)   -> JSON Enrollment (DPS field names) + "sealed"
//	groups         lower(enrollmentGroupId) -> JSON Group + "sealed"
//	registrations  lower(registrationId)   -> JSON Registration + "sealed" (HubKey)
//	                                          + "attestationHash" (base64, absent on older records)
//	groupregs      lower(groupId) 0x00 lower(registrationId) -> empty (the group index)
//	groupcounts    lower(groupId)          -> uint64 big-endian number of registrations
//	counts         "enrollments" | "groups" | "registrations" | "linkedhubs" | "jobs"
//	                                       -> uint64 big-endian
//	ekindex        SHA-256(EK) || lower(registrationId) -> empty (TPM enrollments by EK)
//	operations     operationId (as given)  -> JSON Operation
//	expiry         uint64 BE expiry (Unix ns) || 'o' || operationId -> empty
//	linkedhubs     lower(name)             -> JSON LinkedHub + "sealed" (connection
//	                                          string and webhook secret)
//	jobs           jobId (as given)        -> JSON Job + "sealed" (Secret)
//	jobdue         uint64 BE Unix ns || jobId -> empty: when the job can next be
//	                                          claimed (NotBefore, or LeaseExpires
//	                                          while leased)
//
// ClaimJobs walks jobdue from its start in one write transaction, so two
// claims never lease the same job. Open ends every lease left in the file
// (bbolt admits one process per file, so its holder is gone): jobs a
// crashed process held are due again at once.
//
// meta/groupsrev is GroupsRevision: PutGroup and DeleteGroup add one in
// their own transaction, so a process that keeps the groups in memory (the
// provisioning service, for every CONNECT without an individual
// enrollment) reads one key to know whether its copy is current. A file
// from before it has none and reads 0 until the first group write; no
// migration is needed. Options.MaxGroups bounds the number of groups:
// PutGroup of a new group checks the counter in the same transaction, so
// concurrent creates never overshoot, and a refused create writes nothing.
//
// Record keys are lowercased ids; the record keeps its id as given. Zero
// counters are deleted. groupregs, groupcounts, counts, expiry, ekindex
// and jobdue are derived: they are updated in the same transaction as the
// records and can be rebuilt from them (the version 0 migration does;
// Check compares them with the records).
//
// Values are JSON so that `bbolt get` is readable. Measured
// (BenchmarkEnrollmentCodec, a 700-byte TPM enrollment, loaded 2-core VM)
// encode takes 2-4 µs and decode 7-17 µs, small next to the 1-4 ms fsync of
// every write and within the lookup budget, so a binary encoding would not
// pay for its opacity.
//
// Files by what they hold: store.go (Open, Options, Close, Check),
// records.go (what every record kind shares), enrollments.go, groups.go,
// registrations.go, operations.go (operations, expiry and Sweep),
// linkedhubs.go, jobs.go (the outbox and its leases),
// listing.go (paging), backup.go (Backup, VerifyCopy), groupcommit.go,
// crypto.go (the data key and sealing), schema.go (layout and migrations).
//
// # Etags and times
//
// An etag is 96 random bits in unpadded base64url (16 characters).
// lastUpdatedDateTimeUtc is the write time by Options.Now, in UTC.
//
// # Secrets at rest
//
// Enrollment and group symmetric keys (attestation.symmetricKey.primaryKey
// and secondaryKey) and Registration.HubKey are never stored in the clear.
// They are sealed with AES-256-GCM under the data key: "sealed" is
// nonce(12) || ciphertext || tag, base64 in the JSON, and the stored record
// keeps an empty symmetricKey object in their place. A linked hub's
// connection string and webhook secret, and a job's Secret, are sealed the
// same way. The GCM additional data
// is "dpsd/store/v1" 0x00 bucket 0x00 key, so a ciphertext copied to another
// record or bucket fails to open (store.ErrCorrupt), as does any modified
// byte. Other fields (TPM endorsement keys, certificates, activation blobs
// that are encrypted to a TPM) are public or useless without the device and
// stored as they are.
//
// # Listings
//
// The continuation token is unpadded base64url of a kind byte ('e'
// enrollments, 'g' groups, 'r' group registrations) and the last key
// returned (for 'r' the full groupregs key, which pins the group). Counts
// are O(1) counters.
//
// # Expiry
//
// Operations carry an expiry, indexed in the expiry bucket in time order
// (the kind byte 'o' is the only kind; any other is reported by Check and
// refused by Sweep as store.ErrCorrupt). Sweep walks the index from the start and
// deletes the operations that have expired, at most 10,000 per transaction.
// Nothing else expires: the store keeps no record of issued or used TPM
// challenges (the provisioning service checks their single use in memory).
//
// # Durability and concurrency
//
// Every write method returns after its transaction is committed and fsynced
// (bbolt's default; NoSync is never set). A lone writer commits at once
// (db.Update); when writes overlap they are coalesced by the store's own
// group commit (groupcommit.go) into one transaction and one fsync: while
// one batch commits, the writes that arrive queue up, and the next batch
// takes all of them at once, with no timer, so a batch grows with the
// commit time. A write function may run more than once (when one member of
// a batch fails, the transaction is rolled back, the failing member is run
// again alone and the others are retried without it), so etags, times and
// ciphertexts are computed before the call, and expected refusals
// (ErrPreconditionFailed, ErrNotFound) are reported without failing the
// shared transaction. MaxBatchDelay (default 2 ms) is
// only bbolt's db.Batch delay as set on the file; the store's writes do not
// use db.Batch and wait for no delay. Measured with
// BenchmarkRecordRegistration (registration + operation per write, noisy
// shared VM): 16 writers 3,563 writes/s with db.Batch and a 2 ms delay,
// 7,303 with group commit; 256 writers 22,057 and 29,232 (BENCHMARKS-load.md).
// RecordRegistration writes the registration, the group index
// and the operation in one transaction. PutEnrollments writes many
// enrollments in one transaction (store.EnrollmentBatcher). Close waits for
// calls in flight; later calls return store.ErrClosed.
//
// # Schema versions and upgrades
//
// meta/version is the layout version. A file from a newer build refuses to
// open (ErrSchema, naming both versions). An older file is upgraded by the
// migrations table (migrations in schema.go), all steps in one
// transaction with the new version, so a crash leaves the old version.
// Version 0 is a file without meta/version: the record buckets only, secrets
// in the clear. Its migration creates the buckets, seals the secrets and
// builds the derived buckets. bbolt does not scrub freed pages, so after
// that upgrade compact the file (`bbolt compact`, offline) to drop the old
// plaintext; Open logs a warning when it sealed any. Version 1 also kept
// used TPM challenge references (a "challenges" bucket, reference -> expiry,
// and expiry entries of kind 'c'); its migration deletes the bucket and those
// entries, and nothing else. Version 2's migration builds ekindex; version
// 3's creates the buckets linkedhubs, jobs and jobdue. A version 1 file
// opened by this build can no
// longer be opened by a version 1 build (ErrSchema): keep a backup from
// before the upgrade to roll back.
//
// # Operations
//
// Backup writes a consistent snapshot (tx.WriteTo, writers are not blocked);
// restore by opening the copy with the original key file. VerifyCopy checks
// a copy before it replaces another (`dpsd backup` runs it on what it
// downloaded). Check runs bbolt's page consistency check and the
// derived-bucket check. The file never shrinks; `bbolt compact` rewrites it
// offline.
package bolt
