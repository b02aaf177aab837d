package etcd

// The key layout under the prefix (schema version 1). Ids in keys are the
// lowercased registration and group ids; operation ids are as given.
//
//	meta/schema              -> "1"
//	meta/keycheck            -> HMAC-SHA256(data key, label)[:16] (seal.KeyCheck)
//	meta/groups              -> decimal number of groups; its mod revision is GroupsRevision
//	e/<id>                   -> enrollment JSON (symmetric keys sealed)
//	g/<id>                   -> group JSON (symmetric keys sealed)
//	r/<id>                   -> registration JSON (hub key sealed)
//	gr/<group> 0x00 <id>     -> "" (the group index)
//	ek/<hex SHA-256(EK)>/<id> -> "" (the endorsement key index)
//	o/<operation id>         -> operation JSON            (leased)
//	x/<20-digit ns>/<op id>  -> "" (the expiry index)     (leased)
//	c/<hex challenge id>     -> expiry, Unix seconds      (leased)
//	w/<name>/<window>        -> "" counted by its version (leased)
//	meta/hubs                -> ""; its mod revision is LinkedHubsRevision
//	h/<name>                 -> linked hub JSON (connection string, webhook secret sealed)
//	j/<job id>               -> job JSON (secret sealed; the outbox)
//	jd/<20-digit ns>/<job id> -> "" (the due index: NotBefore, or LeaseExpires while leased)
//
// Linked hubs and jobs came after the first release of this layout without
// a new schema version: a prefix without them has none.

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

const (
	keySchema   = "meta/schema"
	keyCheck    = "meta/keycheck"
	keyGroups   = "meta/groups"
	pfxEnroll   = "e/"
	pfxGroup    = "g/"
	pfxReg      = "r/"
	pfxGroupReg = "gr/"
	pfxEK       = "ek/"
	pfxOp       = "o/"
	pfxExpiry   = "x/"
	pfxUsed     = "c/"
	pfxWindow   = "w/"
	keyHubs     = "meta/hubs"
	pfxHub      = "h/"
	pfxJob      = "j/"
	pfxJobDue   = "jd/"
)

// Seal buckets: the same names as the bbolt engine's, so a sealed value
// is bound to the same (kind, id) in either engine.
const (
	bktEnrollments   = "enrollments"
	bktGroups        = "groups"
	bktRegistrations = "registrations"
	bktLinkedHubs    = "linkedhubs"
	bktJobs          = "jobs"
)

// k returns the full key of a key relative to the prefix.
func (s *Store) k(rel string) string { return s.prefix + rel }

// rel strips the prefix from a full key.
func (s *Store) rel(full []byte) string { return strings.TrimPrefix(string(full), s.prefix) }

// rangeEnd is the end of the range of every key starting with full.
func rangeEnd(full string) string { return prefixEnd(full) }

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00" // every key: etcd's "from key"
}

// ekHash is the index part of an endorsement key given as base64: the
// SHA-256 of the bytes it decodes to, or of the text when it does not
// decode, so that one key spelt two ways is one key.
func ekHash(ek string) string {
	data := []byte(ek)
	if raw, err := base64.StdEncoding.DecodeString(ek); err == nil {
		data = raw
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// ekKey is the index key (relative) of enrollment id with endorsement key ek.
func ekKey(ek, id string) string { return pfxEK + ekHash(ek) + "/" + id }

// groupRegKey is the index key (relative) of registration id in group.
func groupRegKey(group, id string) string { return pfxGroupReg + group + "\x00" + id }

// expiryKey is the expiry index key (relative) of operation id.
func expiryKey(exp time.Time, id string) string {
	return pfxExpiry + expiryStamp(exp) + "/" + id
}

// expiryStamp is exp as 20 decimal digits of Unix nanoseconds (0 before 1970).
func expiryStamp(exp time.Time) string {
	ns := exp.UnixNano()
	if ns < 0 || exp.Year() > 2200 {
		if ns < 0 {
			ns = 0
		} else {
			ns = 1<<63 - 1
		}
	}
	return fmt.Sprintf("%020d", ns)
}
