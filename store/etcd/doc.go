// Package etcd is the cluster Store engine: the records of one
// installation under one key prefix of an etcd v3 cluster, shared by every
// dpsd node that opens the same prefix with the same data key. It
// implements store.Store and passes store/storetest (the same suite as the
// embedded bbolt engine); this documentation describes the engine, the
// contract every engine keeps is the store package's.
//
// # Keys
//
// keys.go lists the layout (schema version 1, meta/schema). Record values
// are the bbolt engine's JSON (DPS field names) without the etag, so
// `etcdctl get --prefix` is readable.
//
// # Etags, writes and transactions
//
// A record's etag is its key's mod revision in decimal: every write of the
// key makes a new one, and revisions only grow, so an etag never repeats,
// also across a delete and re-create. Every write is one etcd transaction
// that compares the record's mod revision with the one it read (create:
// create revision 0) and writes the record and its index entries (group
// index, endorsement key index, meta/groups) together; when another writer
// got there first, an If-Match write fails with store.ErrPreconditionFailed
// and an unconditional one reads again and retries (at most 64 times). A
// write acknowledged by etcd is committed by a quorum of members and
// fsynced by each (etcd's default; never disabled here).
//
// # Counts, limits, revisions
//
// Counts are etcd count-only range requests: etcd counts the keys of a
// range in its in-memory index without reading a value, so no counter key
// is written by every registration (which would make all registrations
// contend for one key). meta/groups is the exception: it holds the number
// of groups and is compared and written by every group write, so that
// concurrent creates never overshoot Options.MaxGroups; its mod revision
// is GroupsRevision. meta/hubs is written with every linked hub write; its
// mod revision is LinkedHubsRevision.
//
// # Linked hubs and the outbox of jobs
//
// Linked hubs (h/) are records like the groups, their connection string and
// webhook secret sealed. Jobs (j/, jobs.go) carry their lease as an owner
// and an expiry time decided by the store's clock, not as an etcd lease: a
// job must outlive any node, and an expired lease only makes it claimable
// again. The due index (jd/) orders jobs by when they can next be claimed
// and moves with every job write in the same transaction. ClaimJobs reads
// the index up to now (an idle claim writes nothing), then takes each due
// job with a compare-and-swap on the revision it read, so two nodes never
// hold one job; ReleaseJob and FinishJob compare the job as its owner holds
// it, so a node whose lease expired and was taken over writes nothing.
// FinishJob writes the registration, its group index entry, the final
// operation and the job's deletion in one transaction. Leases are not ended
// at Open (other nodes may hold them): a crashed node's jobs are claimable
// once their lease expires. The job limit (EnqueueJob's maxPending) is
// counted just before the write, so concurrent enqueues on several nodes
// may pass it by their number: it is back-pressure, not an invariant.
//
// # Expiry: leases
//
// Operations, the expiry index, used TPM challenges and rate-limit windows
// are attached to leases that end a few minutes after the keys expire
// (leases.go: one lease per minute of expiry per node, not one per key),
// so etcd deletes them by itself even if no node sweeps. Expiry is still
// decided by the times stored with the keys: a leader change renews
// leases. Sweep reads the expiry index up to now (no scan of operations)
// and deletes the operations whose revision is their entry's.
//
// # Cluster
//
// UseChallenge (store.ChallengeRecorder) records the single use of a TPM
// challenge with one compare-and-swap (create if absent), so a challenge
// issued by any node authenticates once on any node, across restarts.
// CountInWindow (store.WindowCounter) counts the requests of a fixed time
// window for the whole cluster: the counter is the key's version, one Put
// that returns the previous version, no retries.
//
// # Secrets at rest
//
// Symmetric keys and hub keys are sealed with AES-256-GCM under the
// cluster's store key, exactly as the bbolt engine seals them
// (store/internal/seal: the additional data binds kind and id, not the
// prefix). meta/keycheck ties the key to the prefix: Open refuses another
// key (ErrKey). Nothing secret is stored in the clear.
//
// # Limits of etcd and what follows
//
// etcd refuses a request over 1.5 MiB and a transaction of more than 128
// operations (defaults). Every write of a record is at most 6 operations
// and a few KiB; reads of many records (a page of a group's registrations,
// up to 1,000) are split into read-only transactions of 100 gets at one
// revision. The engine does not implement store.EnrollmentBatcher: one
// transaction cannot hold the API's bulk of up to 10,000 enrollments, and
// cutting it into several would break its all-or-nothing promise, so a
// bulk request writes its items one by one (each item atomic, each
// reported on its own, as the DPS bulk answer does anyway). Restore and
// dpsd store copy write in transactions of at most 100 keys and 1 MiB.
//
// # Unavailability
//
// Every call runs with a deadline (Options.RequestTimeout, default 5 s)
// and clientv3.WithRequireLeader, so a member cut off from its quorum
// answers at once instead of hanging. Errors that mean "no answer"
// (deadline, no leader, stopped, unavailable, out of space) wrap
// store.ErrUnavailable: the service answers 503 / CONNACK "server
// unavailable" and devices retry; nothing is answered from stale data
// (reads are linearizable, never serializable).
//
// # Backup
//
// Backup reads every key of the prefix at one revision (paged reads with
// WithRev: a consistent snapshot while writers go on) and writes a stream
// of its own (backup.go) ending in a SHA-256 trailer; ReadBackup checks
// one, Restore writes one into an empty prefix. etcd's own snapshot
// (etcdctl snapshot save) copies the whole database of every tenant and is
// the operator's tool for disaster recovery of the cluster itself.
package etcd
