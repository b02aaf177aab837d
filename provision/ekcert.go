package provision

// EK certificates on the service side. A TPM device may send the EK
// certificate its manufacturer stored in the TPM's NV with its register
// request (tpm.endorsementKeyCertificate). It is checked against every
// root the service trusts at once, the service's own TPM roots
// (Config.TPMRoots) and every TPM group's, before the registration id is
// looked up: the outcome (valid, untrusted, expired, ...) depends on the
// certificate and the configuration only, so that neither the metrics nor
// the work done tell enrolled ids from unknown ones. What the check finds
// (the roots its chains end at) is then used by the enrollment or group
// that decides (tpmadmit.go).
//
// Checking is parsing plus x509 chain building, about 0.3 ms; a TPM
// provisioning sends the certificate twice (the challenge and the
// register), and a fleet shares a handful of chains. So the verdict of a
// certificate (parsed, and its chains' roots and validity windows) is kept
// per snapshot of the groups (groups.go), keyed by the certificate's hash:
// a repeat costs one SHA-256 of the certificate and a map lookup. The key
// match with the EK, which differs per request, is checked each time. A
// new groups revision starts an empty cache, so a changed root set is never
// judged by an old verdict.

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tpmdps/dpsd/attest"
)

const (
	// ekCertCacheSize bounds the certificates whose verdict is remembered
	// per groups snapshot; at about 3 KiB an entry (the parsed
	// certificate), some 12 MiB at most.
	ekCertCacheSize = 4096
	// ekCertRefusalTTL is how long the verdict on a refused certificate
	// (malformed, untrusted, expired, revoked) is reused: long enough that
	// a client repeating one bad certificate costs a lookup, short enough
	// that a certificate not yet valid is looked at again soon.
	ekCertRefusalTTL = time.Minute
)

// ekTrustIndex is the EK certificate trust of one groups snapshot.
type ekTrustIndex struct {
	// trust verifies chains to every root: the service's and every TPM
	// group's; nil when there is no root at all.
	trust *attest.EKTrust
	// service names the roots of Config.TPMRoots.
	service map[attest.CertFingerprint]bool
	cache   *ekCertCache
}

// ekCertVerdict is what a certificate is, whatever EK it is sent with.
// Immutable once cached.
type ekCertVerdict struct {
	cert *attest.EKCertificate // nil when it does not parse
	err  error                 // why it is refused; nil when a chain holds
	// ends are the verified chains' roots and validity windows.
	ends []chainEnd
	// until bounds the reuse of a refusal.
	until time.Time
}

// chainEnd is one verified chain: the root it ends at and when every
// certificate on it is valid.
type chainEnd struct {
	root                attest.CertFingerprint
	notBefore, notAfter time.Time
}

// ekCertCache remembers verdicts by certificate hash. Safe for concurrent use.
type ekCertCache struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]*ekCertVerdict
}

func newEKCertCache() *ekCertCache {
	return &ekCertCache{m: make(map[[sha256.Size]byte]*ekCertVerdict)}
}

// ekCheck is the outcome of the EK certificate of one request.
type ekCheck struct {
	// sent: the request carried a certificate.
	sent bool
	// cert is the parsed certificate (nil when malformed or not sent).
	cert *attest.EKCertificate
	// err is why the certificate cannot vouch for the EK; nil when it does.
	err error
	// outcome is the EKCert* label; "" when nothing was checked (none
	// sent, or no root configured anywhere).
	outcome string
	// roots are the roots its chains end at now (err == nil only).
	roots map[attest.CertFingerprint]bool
	// service: one of them is a root of Config.TPMRoots.
	service bool
}

// errNoEKRoots: a certificate was sent but no root is configured anywhere.
var errNoEKRoots = errors.New("no TPM roots are configured (dpsd tpm-roots, or the roots of a TPM group)")

// checkEKCertificate checks the base64 EK certificate b64 sent with ek
// against every root of snap, at now.
func (s *Service) checkEKCertificate(snap *groupSnapshot, ek *attest.Public, b64 string, now time.Time) ekCheck {
	if b64 == "" {
		return ekCheck{}
	}
	idx := snap.ek
	if idx == nil || idx.trust == nil {
		return ekCheck{sent: true, err: errNoEKRoots}
	}
	if len(b64) > base64.StdEncoding.EncodedLen(attest.MaxEKCertificateSize) {
		return ekCheck{sent: true, outcome: EKCertMalformed, err: fmt.Errorf("%w: larger than %d bytes", attest.ErrBadEKCertificate, attest.MaxEKCertificateSize)}
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return ekCheck{sent: true, outcome: EKCertMalformed, err: fmt.Errorf("%w: not base64: %w", attest.ErrBadEKCertificate, err)}
	}
	v := idx.verdict(raw, now)
	c := ekCheck{sent: true, cert: v.cert}
	if v.cert == nil {
		c.outcome, c.err = EKCertMalformed, v.err
		return c
	}
	if err := v.cert.MatchesEK(ek); err != nil {
		c.outcome, c.err = EKCertKeyMismatch, err
		return c
	}
	if v.err != nil {
		c.err = v.err
		switch {
		case errors.Is(v.err, attest.ErrEKCertificateExpired):
			c.outcome = EKCertExpired
		case errors.Is(v.err, attest.ErrEKCertificateRevoked):
			c.outcome = EKCertRevoked
		case errors.Is(v.err, attest.ErrBadEKCertificate):
			c.outcome = EKCertMalformed
		default:
			c.outcome = EKCertUntrusted
		}
		return c
	}
	c.outcome, c.roots = EKCertValid, make(map[attest.CertFingerprint]bool, len(v.ends))
	for _, e := range v.ends {
		if !now.Before(e.notBefore) && !now.After(e.notAfter) {
			c.roots[e.root] = true
			c.service = c.service || idx.service[e.root]
		}
	}
	return c
}

// verdict returns the cached verdict on raw if it still holds at now, or
// checks raw and caches the result.
func (idx *ekTrustIndex) verdict(raw []byte, now time.Time) *ekCertVerdict {
	key := sha256.Sum256(raw)
	idx.cache.mu.Lock()
	v, ok := idx.cache.m[key]
	idx.cache.mu.Unlock()
	if ok && v.holdsAt(now) {
		return v
	}
	v = idx.check(raw, now)
	idx.cache.mu.Lock()
	if len(idx.cache.m) >= ekCertCacheSize {
		for k := range idx.cache.m { // evict an arbitrary entry (map order is random)
			delete(idx.cache.m, k)
			break
		}
	}
	idx.cache.m[key] = v
	idx.cache.mu.Unlock()
	return v
}

// holdsAt reports whether a cached verdict may be reused at now: a refusal
// until its time is up, an acceptance while at least one of its chains is
// valid (afterwards the certificate is checked again, and found expired).
func (v *ekCertVerdict) holdsAt(now time.Time) bool {
	if v.err != nil || v.cert == nil {
		return now.Before(v.until)
	}
	for _, e := range v.ends {
		if !now.Before(e.notBefore) && !now.After(e.notAfter) {
			return true
		}
	}
	return false
}

// check parses raw and verifies its chains at now.
func (idx *ekTrustIndex) check(raw []byte, now time.Time) *ekCertVerdict {
	until := now.Add(ekCertRefusalTTL)
	cert, err := attest.ParseEKCertificate(raw)
	if err != nil {
		return &ekCertVerdict{err: err, until: until}
	}
	chains, err := idx.trust.Verify(cert, now)
	if err != nil {
		return &ekCertVerdict{cert: cert, err: err, until: until}
	}
	v := &ekCertVerdict{cert: cert}
	for _, ch := range chains {
		nb, na := attest.ChainWindow(ch)
		v.ends = append(v.ends, chainEnd{root: attest.FingerprintOf(ch[len(ch)-1]), notBefore: nb, notAfter: na})
	}
	return v
}
