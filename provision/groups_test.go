package provision

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/store"
)

// countingStore is the real store, counting the group reads the service makes.
type countingStore struct {
	store.Store
	lists, revisions atomic.Int64
}

func (c *countingStore) ListGroups(ctx context.Context, q store.Query) (store.Page[*store.Group], error) {
	c.lists.Add(1)
	return c.Store.ListGroups(ctx, q)
}

func (c *countingStore) GroupsRevision(ctx context.Context) (uint64, error) {
	c.revisions.Add(1)
	return c.Store.GroupsRevision(ctx)
}

// newCountingEnv is newEnv whose service reads the store through a countingStore.
func newCountingEnv(t *testing.T) (*env, *countingStore) {
	t.Helper()
	var cs *countingStore
	e := newEnv(t, func(c *Config) {
		cs = &countingStore{Store: c.Store}
		c.Store = cs
	})
	return e, cs
}

func symGroup(id string, primary []byte) *store.Group {
	return &store.Group{EnrollmentGroupID: id, EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
		SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: b64(primary)}}, ProvisioningStatus: store.StatusEnabled}}
}

// TestGroupCacheFollowsStoreWrites: groups are kept in memory, and a group
// added, changed or deleted in the store (by any writer: here the store
// itself, as another node would) is seen on the next attempt. Attempts with
// no write in between do not read the groups again.
func TestGroupCacheFollowsStoreWrites(t *testing.T) {
	e, cs := newCountingEnv(t)
	const dev = "cache-dev"
	k1, k2 := symKey(0x11), symKey(0x22)
	connect := func(groupKey []byte) (Identity, error) {
		return e.connect(dev, e.sas(dev, deriveKey(groupKey, dev), ""))
	}
	if _, err := connect(k1); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("before the group exists: %v", err)
	}
	// Added.
	e.putGroup(symGroup("fleet", k1))
	if id, err := connect(k1); err != nil || id.GroupID != "fleet" {
		t.Fatalf("after the group was added: %+v, %v", id, err)
	}
	// Not read again while nothing changes.
	lists := cs.lists.Load()
	for range 20 {
		if _, err := connect(k1); err != nil {
			t.Fatal(err)
		}
		if _, err := connect(k2); !errors.Is(err, ErrNotAuthorized) {
			t.Fatal(err)
		}
	}
	if n := cs.lists.Load() - lists; n != 0 {
		t.Fatalf("40 attempts without a group write listed the groups %d times", n)
	}
	// Changed: the old key stops working at once, the new one works.
	e.putGroup(symGroup("fleet", k2))
	if _, err := connect(k1); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("the replaced group key still works: %v", err)
	}
	if id, err := connect(k2); err != nil || id.GroupID != "fleet" {
		t.Fatalf("the new group key: %+v, %v", id, err)
	}
	// Deleted.
	if err := e.st.DeleteGroup(e.ctx, "fleet", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := connect(k2); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("the deleted group still works: %v", err)
	}
	// The same for an X.509 group.
	ca1, err := devca.NewRootCA("cache CA 1", e.clock.Now(), 24*time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := devca.NewRootCA("cache CA 2", e.clock.Now(), 24*time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf1, leaf2 := e.issue(ca1, dev).cert, e.issue(ca2, dev).cert
	e.putGroup(x509Group("x509-fleet", withCert(string(ca1.CertPEM())), nil))
	if id, err := e.connectX509(dev, leaf1); err != nil || id.GroupID != "x509-fleet" {
		t.Fatalf("X.509 group added: %+v, %v", id, err)
	}
	e.putGroup(x509Group("x509-fleet", withCert(string(ca2.CertPEM())), nil))
	if _, err := e.connectX509(dev, leaf1); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("the replaced CA still verifies: %v", err)
	}
	if id, err := e.connectX509(dev, leaf2); err != nil || id.GroupID != "x509-fleet" {
		t.Fatalf("the new CA: %+v, %v", id, err)
	}
	if err := e.st.DeleteGroup(e.ctx, "x509-fleet", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.connectX509(dev, leaf2); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("the deleted X.509 group still verifies: %v", err)
	}
}

// TestGroupCacheTwoServicesOneStore: two services on one store (two nodes
// of a shared store) each keep their own copy; a write through neither of
// them reaches both on their next attempt.
func TestGroupCacheTwoServicesOneStore(t *testing.T) {
	e := newEnv(t)
	other, err := New(e.svc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	const dev = "shared-dev"
	try := func(svc *Service, groupKey []byte) error {
		_, err := svc.Authenticate(e.ctx, Connect{ClientID: dev, Username: username(dev), Password: e.sas(dev, deriveKey(groupKey, dev), "")})
		return err
	}
	e.putGroup(symGroup("shared", symKey(1)))
	for _, svc := range []*Service{e.svc, other} {
		if err := try(svc, symKey(1)); err != nil {
			t.Fatal(err)
		}
	}
	e.putGroup(symGroup("shared", symKey(2)))
	for i, svc := range []*Service{e.svc, other} {
		if err := try(svc, symKey(1)); !errors.Is(err, ErrNotAuthorized) {
			t.Fatalf("service %d: old key after the change: %v", i, err)
		}
		if err := try(svc, symKey(2)); err != nil {
			t.Fatalf("service %d: new key: %v", i, err)
		}
	}
}

// TestGroupCacheConcurrentRebuild: many attempts right after a group write
// all see it, while the groups are listed once for the new revision.
func TestGroupCacheConcurrentRebuild(t *testing.T) {
	e, cs := newCountingEnv(t)
	const dev = "busy-dev"
	e.putGroup(symGroup("busy", symKey(5)))
	if _, err := e.connect(dev, e.sas(dev, deriveKey(symKey(5), dev), "")); err != nil {
		t.Fatal(err)
	}
	e.putGroup(symGroup("busy", symKey(6)))
	lists := cs.lists.Load()
	var wg sync.WaitGroup
	errs := make([]error, 32)
	for i := range errs {
		wg.Go(func() { _, errs[i] = e.connect(dev, e.sas(dev, deriveKey(symKey(6), dev), "")) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	if n := cs.lists.Load() - lists; n != 1 {
		t.Fatalf("32 concurrent attempts after one write listed the groups %d times, want 1", n)
	}
}

// certWithKeyIDs issues a CA or leaf certificate for cn under parent (or
// self-signed when parent is nil) with explicit key ids: a nil authority
// key id leaves the extension out.
func certWithKeyIDs(t *testing.T, e *env, cn string, parent *devca.CA, isCA bool, subjectKeyID, authorityKeyID []byte) *devca.CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	now := e.clock.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		SubjectKeyId: subjectKeyID,
	}
	if isCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.ExtKeyUsage = nil
		tmpl.BasicConstraintsValid, tmpl.IsCA = true, true
	}
	parentCert, signer := tmpl, key
	if parent != nil {
		parentCert, signer = parent.Cert, parent.Key
		// CreateCertificate copies the parent's subject key id into the
		// authority key id; a template without one must not inherit it.
		pc := *parent.Cert
		pc.SubjectKeyId = authorityKeyID
		parentCert = &pc
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &devca.CA{Cert: cert, Key: key}
}

// TestX509GroupSelectedByIssuer: with many X.509 groups, a chain is
// verified only against the CAs its certificates name as issuer (by
// authority key id, else by subject): a chain from group N's CA verifies
// once, against group N; a chain from an unknown CA verifies against none.
func TestX509GroupSelectedByIssuer(t *testing.T) {
	e := newEnv(t)
	var verified []string
	var mu sync.Mutex
	e.svc.onX509Verify = func(groupID string) {
		mu.Lock()
		defer mu.Unlock()
		verified = append(verified, groupID)
	}
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := verified
		verified = nil
		return out
	}
	const n = 40
	cas := make([]*devca.CA, n)
	for i := range cas {
		ca, err := devca.NewRootCA(fmt.Sprintf("fleet CA %02d", i), e.clock.Now(), 24*time.Hour, 1)
		if err != nil {
			t.Fatal(err)
		}
		cas[i] = ca
		e.putGroup(x509Group(fmt.Sprintf("fleet-%02d", i), withCert(string(ca.CertPEM())), nil))
	}
	// Group 27's CA: one verification, against group 27.
	id, err := e.connectX509("dev-27", e.issue(cas[27], "dev-27").cert)
	if err != nil || id.GroupID != "fleet-27" {
		t.Fatalf("device of group 27: %+v, %v", id, err)
	}
	if got := take(); !slices.Equal(got, []string{"fleet-27"}) {
		t.Fatalf("verified against %v, want only fleet-27", got)
	}
	// Through an intermediate of group 31's CA: still one verification.
	inter, err := cas[31].NewIntermediate("fleet 31 intermediate", e.clock.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id, err = e.connectX509("dev-31", e.issue(inter, "dev-31").cert, inter.Cert)
	if err != nil || id.GroupID != "fleet-31" {
		t.Fatalf("device of group 31 through an intermediate: %+v, %v", id, err)
	}
	if got := take(); !slices.Equal(got, []string{"fleet-31"}) {
		t.Fatalf("verified against %v, want only fleet-31", got)
	}
	// An unknown CA: no verification at all.
	rogue, err := devca.NewRootCA("rogue CA", e.clock.Now(), 24*time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.connectX509("dev-rogue", e.issue(rogue, "dev-rogue").cert); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("unknown CA: %v", err)
	}
	if got := take(); len(got) != 0 {
		t.Fatalf("an unknown CA's chain was verified against %v", got)
	}
	// A forged chain naming group 5's CA as issuer (its name and key id)
	// but signed by another key: verified against group 5 only, and refused.
	lookalike := *cas[5].Cert // group 5's name and key id, the rogue's key
	lookalike.PublicKey = &rogue.Key.PublicKey
	forgedIssuer := &devca.CA{Cert: &lookalike, Key: rogue.Key}
	forged := e.issue(forgedIssuer, "dev-forged").cert
	if _, err := e.connectX509("dev-forged", forged); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("forged chain: %v", err)
	}
	if got := take(); !slices.Equal(got, []string{"fleet-05"}) {
		t.Fatalf("forged chain verified against %v, want only fleet-05", got)
	}

	// Two groups whose CAs share a subject (a CA renewed with a new key):
	// the authority key id picks the right one; a chain without it is
	// tried against both, in group id order, and verifies with its own.
	oldCA := certWithKeyIDs(t, e, "renewed CA", nil, true, []byte("old-key-id"), nil)
	newCA := certWithKeyIDs(t, e, "renewed CA", nil, true, []byte("new-key-id"), nil)
	e.putGroup(x509Group("renewed-a-old", withCert(b64DER(oldCA.Cert)), nil))
	e.putGroup(x509Group("renewed-b-new", withCert(b64DER(newCA.Cert)), nil))
	withAKID := certWithKeyIDs(t, e, "dev-renewed", newCA, false, nil, newCA.Cert.SubjectKeyId)
	if len(withAKID.Cert.AuthorityKeyId) == 0 {
		t.Fatal("fixture: the leaf has no authority key id")
	}
	if id, err := e.connectX509("dev-renewed", withAKID.Cert); err != nil || id.GroupID != "renewed-b-new" {
		t.Fatalf("leaf of the renewed CA: %+v, %v", id, err)
	}
	if got := take(); !slices.Equal(got, []string{"renewed-b-new"}) {
		t.Fatalf("with an authority key id, verified against %v, want only renewed-b-new", got)
	}
	noAKID := certWithKeyIDs(t, e, "dev-renewed", newCA, false, nil, nil)
	if len(noAKID.Cert.AuthorityKeyId) != 0 {
		t.Fatal("fixture: the leaf has an authority key id")
	}
	if id, err := e.connectX509("dev-renewed", noAKID.Cert); err != nil || id.GroupID != "renewed-b-new" {
		t.Fatalf("leaf without an authority key id: %+v, %v", id, err)
	}
	if got := take(); !slices.Equal(got, []string{"renewed-a-old", "renewed-b-new"}) {
		t.Fatalf("by subject, verified against %v, want renewed-a-old then renewed-b-new", got)
	}
}

// TestRefusalOfEnrolledIDDoesTheGroupWork: refusing an id that has an
// individual enrollment (wrong key, other type, other certificate) reads
// and tries the groups like refusing an unknown id, so that the time of a
// refusal does not tell the two apart.
func TestRefusalOfEnrolledIDDoesTheGroupWork(t *testing.T) {
	e, cs := newCountingEnv(t)
	e.putGroup(symGroup("g", symKey(9)))
	e.putEnrollment(symmetricEnrollment("known-sym", symKey(1), symKey(2)))
	pinned := e.selfSigned("known-x509")
	e.putEnrollment(x509Enrollment("known-x509", withCert(pinned.pem), nil))
	root, err := devca.NewRootCA("work CA", e.clock.Now(), 24*time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	e.putGroup(x509Group("x", withCert(string(root.CertPEM())), nil))
	var verifies atomic.Int64
	e.svc.onX509Verify = func(string) { verifies.Add(1) }

	for _, tc := range []struct {
		name string
		try  func() error
	}{
		{"unknown id", func() error { _, err := e.connect("nobody", e.sas("nobody", symKey(3), "")); return err }},
		{"wrong key", func() error { _, err := e.connect("known-sym", e.sas("known-sym", symKey(3), "")); return err }},
		{"other type", func() error { _, err := e.connect("known-x509", e.sas("known-x509", symKey(3), "")); return err }},
	} {
		before := cs.revisions.Load()
		if err := tc.try(); !errors.Is(err, ErrNotAuthorized) {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if cs.revisions.Load() == before {
			t.Errorf("%s: refused without trying the groups", tc.name)
		}
	}
	for _, tc := range []struct {
		name, regID string
	}{{"unknown id", "nobody-x"}, {"other certificate", "known-x509"}, {"other type", "known-sym"}} {
		before := verifies.Load()
		if _, err := e.connectX509(tc.regID, e.issue(root, tc.regID).cert); tc.regID != "nobody-x" && !errors.Is(err, ErrNotAuthorized) {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if verifies.Load() != before+1 {
			t.Errorf("%s: %d group verifications, want 1", tc.name, verifies.Load()-before)
		}
	}
	// A leaf no group may take (no digitalSignature) is refused before any
	// verification, for an unknown id and an enrolled one alike.
	for _, regID := range []string{"nobody-ku", "known-x509"} {
		before := verifies.Load()
		leaf := e.issueWithUsage(root, regID, certUsage{keyUsage: x509.KeyUsageKeyEncipherment}, false).Cert
		if _, err := e.connectX509(regID, leaf); !errors.Is(err, ErrNotAuthorized) {
			t.Fatalf("%s: %v", regID, err)
		}
		if n := verifies.Load() - before; n != 0 {
			t.Errorf("%s: %d group verifications for a leaf no group may take, want 0", regID, n)
		}
	}
}
