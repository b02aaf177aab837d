package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/internal/etcdtest"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/softtpm"
	"github.com/tpmdps/dpsd/store"
	etcdstore "github.com/tpmdps/dpsd/store/etcd"
)

// balancer is a TCP load balancer on loopback in front of the nodes, with
// no stickiness: for plain MQTT it reads the CONNECT's client id and sends
// every connection of a device to another node than its previous one (so
// a TPM device's reconnect never reaches the node that issued its
// challenge); TLS connections go round robin. A node that refuses the
// connection (killed) is skipped, as a load balancer's health check would.
type balancer struct {
	mqtt, mqtts []string // node addresses, by node index

	mu      sync.Mutex
	last    map[string]int // client id -> node of its latest connection
	rr      int
	served  []atomic.Int64 // connections forwarded per node
	crossed atomic.Int64   // TPM reconnects sent to another node than the challenge's
	same    atomic.Int64   // ... sent to the same node (must stay 0)
	pending map[string]int // client id -> node that issued its challenge
}

func newBalancer(mqtt, mqtts []string) *balancer {
	return &balancer{mqtt: mqtt, mqtts: mqtts, last: map[string]int{}, pending: map[string]int{},
		served: make([]atomic.Int64, len(mqtt))}
}

// listen serves connections on a new loopback listener until t ends.
func (b *balancer) listen(t *testing.T, tlsMode bool) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go b.forward(c, tlsMode)
		}
	}()
	return ln.Addr().String()
}

// challenged marks that id's current connection got a challenge: its next
// connection is a TPM reconnect.
func (b *balancer) challenged(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pending[id] = b.last[id]
}

// forward picks a node for c and relays both ways.
func (b *balancer) forward(c net.Conn, tlsMode bool) {
	defer c.Close()
	var head []byte
	id := ""
	if !tlsMode {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var err error
		if head, id, err = readConnect(c); err != nil {
			return
		}
		_ = c.SetReadDeadline(time.Time{})
	}
	addrs := b.mqtt
	if tlsMode {
		addrs = b.mqtts
	}
	b.mu.Lock()
	start := b.rr
	b.rr++
	if n, ok := b.last[id]; ok && id != "" {
		start = n + 1
	}
	b.mu.Unlock()
	var up net.Conn
	node := -1
	for i := range len(addrs) {
		n := (start + i) % len(addrs)
		if id != "" {
			b.mu.Lock()
			prev, ok := b.last[id]
			b.mu.Unlock()
			if ok && prev == n {
				continue // never the same node twice in a row
			}
		}
		var err error
		if up, err = net.DialTimeout("tcp", addrs[n], 2*time.Second); err == nil {
			node = n
			break
		}
	}
	if up == nil {
		return
	}
	defer up.Close()
	b.served[node].Add(1)
	if id != "" {
		b.mu.Lock()
		if ch, ok := b.pending[id]; ok {
			delete(b.pending, id)
			if ch == node {
				b.same.Add(1)
			} else {
				b.crossed.Add(1)
			}
		}
		b.last[id] = node
		b.mu.Unlock()
	}
	if _, err := up.Write(head); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// readConnect reads an MQTT CONNECT packet and returns its bytes and client id.
func readConnect(r io.Reader) ([]byte, string, error) {
	var hdr [1]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil || hdr[0]>>4 != 1 {
		return nil, "", errors.New("not a CONNECT")
	}
	raw := []byte{hdr[0]}
	n, mult := 0, 1
	for i := 0; i < 4; i++ {
		var b [1]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, "", err
		}
		raw = append(raw, b[0])
		n += int(b[0]&0x7f) * mult
		mult *= 128
		if b[0]&0x80 == 0 {
			break
		}
	}
	if n > 64<<10 {
		return nil, "", errors.New("CONNECT too large")
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, "", err
	}
	raw = append(raw, body...)
	p := 0
	str := func() (string, error) {
		if p+2 > len(body) {
			return "", errors.New("short")
		}
		l := int(binary.BigEndian.Uint16(body[p:]))
		if p+2+l > len(body) {
			return "", errors.New("short")
		}
		s := string(body[p+2 : p+2+l])
		p += 2 + l
		return s, nil
	}
	if _, err := str(); err != nil { // protocol name
		return nil, "", err
	}
	if p+4 > len(body) {
		return nil, "", errors.New("short")
	}
	level := body[p]
	p += 4 // level, flags, keep alive
	if level == 5 {
		plen, k := binary.Uvarint(body[p:]) // MQTT varints are LEB128 like uvarint
		p += k + int(plen)
	}
	id, err := str()
	return raw, id, err
}

// rawConnect sends one MQTT 3.1.1 CONNECT with a password to addr and
// returns the CONNACK return code.
func rawConnect(addr, clientID, username, password string) (byte, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	s := func(v string) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(v))), v...) }
	var body []byte
	body = append(body, s("MQTT")...)
	body = append(body, 4, 0xC2, 0, 30) // 3.1.1, username+password+clean, keep alive 30
	body = append(body, s(clientID)...)
	body = append(body, s(username)...)
	body = append(body, s(password)...)
	pkt := []byte{0x10}
	for n := len(body); ; {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		pkt = append(pkt, b)
		if n == 0 {
			break
		}
	}
	if _, err := c.Write(append(pkt, body...)); err != nil {
		return 0, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return 0, err
	}
	return ack[3], nil
}

// softTPM is a device.Attestation for a software TPM: it tells the
// balancer when it was challenged and keeps the SAS token of each
// challenge for the replay check.
type softTPM struct {
	tpm *softtpm.Device
	lb  *balancer

	mu   sync.Mutex
	last string // the TPM-signed SAS of the latest challenge answered
}

func (s *softTPM) Credentials(context.Context, device.Session) (device.Credentials, error) {
	return device.Credentials{}, nil
}

func (s *softTPM) RegisterFields(context.Context, device.Session) (map[string]any, error) {
	return map[string]any{"tpm": map[string]string{
		"endorsementKey": base64.StdEncoding.EncodeToString(s.tpm.EK.Public()),
		"storageRootKey": base64.StdEncoding.EncodeToString(s.tpm.SRK.Public()),
	}}, nil
}

func (s *softTPM) Challenge(_ context.Context, se device.Session, c device.Challenge) (device.Credentials, error) {
	key, err := s.tpm.Activate(c.AuthenticationKey)
	if err != nil {
		return device.Credentials{}, err
	}
	tok := attest.SignSAS(key, se.Resource, se.Now.Add(time.Hour), c.KeyName)
	s.lb.challenged(se.RegistrationID)
	s.mu.Lock()
	s.last = tok
	s.mu.Unlock()
	return device.Credentials{Password: tok}, nil
}

// clusterDevice is one device of the flood.
type clusterDevice struct {
	id   string
	kind string
	att  device.Attestation
	tls  bool
}

// TestClusterFailover runs three `dpsd serve` processes on one etcd
// cluster of three members (each a process of its own) behind a load
// balancer without stickiness, and floods them with TPM (software TPM),
// symmetric-key and X.509 devices; every TPM reconnect goes to another
// node than its challenge. During the flood one dpsd node and one etcd
// member are killed with SIGKILL. Afterwards every acknowledged
// registration is present exactly once, no challenge authenticated twice
// (TPM authentications logged by the nodes equal the single-use records
// in etcd, and every replay of a used challenge on another node is
// refused), every device that kept retrying is assigned, and the two
// surviving nodes served before and after the kills.
func TestClusterFailover(t *testing.T) {
	const (
		tpmDevices, symDevices, x509Devices = 24, 24, 12
		rounds                              = 3 // provisionings per device
	)
	bin := buildDpsd(t)
	root := t.TempDir()

	// etcd: three members, each a child process.
	cfgs := etcdtest.Configs(t, filepath.Join(root, "etcd"), 3)
	members := make([]*etcdtest.Process, 3)
	var eps []string
	for i, c := range cfgs {
		members[i] = etcdtest.Child(t, c)
		eps = append(eps, members[i].Endpoint())
	}
	etcdtest.WaitHealthy(t, eps)

	// Shared secrets, written once.
	secrets := filepath.Join(root, "secrets")
	if out, err := exec.Command(bin, "cluster", "init", secrets, "--tls-names", "127.0.0.1,localhost").CombinedOutput(); err != nil {
		t.Fatalf("cluster init: %v\n%s", err, out)
	}
	sec, err := datadir.ReadClusterSecrets(secrets)
	if err != nil {
		t.Fatal(err)
	}
	storeURL := "etcd://" + strings.Join(eps, ",") + "/e2e"

	// Three nodes.
	nodes := make([]*dpsdProc, 3)
	var mqttAddrs, mqttsAddrs []string
	for i := range nodes {
		mqtts := testkit.FreeAddr(t)
		nodes[i] = newDpsd(t, bin, "-secrets-dir", secrets, "-store", storeURL, "-mqtts-addr", mqtts, "-log-level", "info")
		nodes[i].start()
		mqttAddrs = append(mqttAddrs, nodes[i].mqtt)
		mqttsAddrs = append(mqttsAddrs, mqtts)
	}
	lb := newBalancer(mqttAddrs, mqttsAddrs)
	plain, secure := lb.listen(t, false), lb.listen(t, true)

	// Enrollments, written straight to the shared store.
	ctx := ctxTimeout(t, 3*time.Minute)
	st, err := etcdstore.Open(ctx, etcdstore.Options{Endpoints: eps, Prefix: "/e2e/", Key: sec.StoreKey})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	tokens := make(chan string, tpmDevices*rounds)
	var devs []*clusterDevice
	var pool []*softtpm.Device
	for i := range 6 {
		alg := softtpm.RSA2048
		if i%2 == 1 {
			alg = softtpm.ECCP256
		}
		d, err := softtpm.NewDevice(rand.Reader, alg)
		if err != nil {
			t.Fatal(err)
		}
		pool = append(pool, d)
	}
	put := func(e *store.Enrollment) {
		e.IoTHubHostName, e.ProvisioningStatus = e2eHub, store.StatusEnabled
		if _, err := st.PutEnrollment(ctx, e, ""); err != nil {
			t.Fatal(err)
		}
	}
	for i := range tpmDevices {
		d := pool[i%len(pool)]
		id := fmt.Sprintf("tpm-%02d", i)
		put(&store.Enrollment{RegistrationID: id, EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{
			Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: base64.StdEncoding.EncodeToString(d.EK.Public())}}}})
		devs = append(devs, &clusterDevice{id: id, kind: "tpm", att: &softTPM{tpm: d, lb: lb}})
	}
	for i := range symDevices {
		id := fmt.Sprintf("sym-%02d", i)
		key := randomKey(t, 32)
		put(&store.Enrollment{RegistrationID: id, EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{
			Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(key)}}}})
		att, err := device.NewSymmetricKey(key)
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, &clusterDevice{id: id, kind: "sym", att: att})
	}
	for i := range x509Devices {
		id := fmt.Sprintf("x509-%02d", i)
		certPEM, keyPEM, err := devca.SelfSignedClient(id, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		put(&store.Enrollment{RegistrationID: id, EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{
			Type: store.AttestationX509, X509: &store.X509Attestation{ClientCertificates: &store.X509Certificates{
				Primary: &store.X509CertificateWithInfo{Certificate: string(certPEM)}}}}}})
		att, err := device.NewX509(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, &clusterDevice{id: id, kind: "x509", att: att, tls: true})
	}
	rootCAs := nodes[0].clusterCAs(secrets)

	// The flood: every device provisions `rounds` times, retrying until
	// assigned; the kills come once a third of the provisionings are done.
	total := len(devs) * rounds
	var done atomic.Int64
	killAt := int64(total / 3)
	killed := make(chan time.Time, 1)
	var killOnce sync.Once
	type success struct {
		node int
		at   time.Time
	}
	var mu sync.Mutex
	assigned := map[string]int{}
	var successes []success
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Go(func() {
			for r := 0; r < rounds; r++ {
				host, port := splitHostPort(t, plain)
				cfg := device.Config{Host: host, Port: port, Transport: device.TransportTCP, IDScope: sec.IDScope,
					RegistrationID: d.id, Attestation: d.att, Timeout: 20 * time.Second, ConnectTimeout: 5 * time.Second,
					Backoff: device.Backoff{Initial: 100 * time.Millisecond, Max: time.Second, MaxAttempts: 30}}
				if d.tls {
					cfg.Host, cfg.Port = splitHostPort(t, secure)
					cfg.Transport, cfg.RootCAs = device.TransportTLS, rootCAs
				}
				for attempt := 0; ; attempt++ {
					res, perr := device.Provision(ctx, cfg)
					if perr == nil && res.Status == device.StatusAssigned {
						break
					}
					if ctx.Err() != nil || attempt > 100 {
						t.Errorf("%s round %d: not assigned after %d attempts: %v", d.id, r, attempt, perr)
						return
					}
				}
				if st, ok := d.att.(*softTPM); ok {
					// The token that just authenticated: replayed below.
					st.mu.Lock()
					tokens <- st.last
					st.mu.Unlock()
				}
				lb.mu.Lock()
				node := lb.last[d.id]
				lb.mu.Unlock()
				mu.Lock()
				assigned[d.id]++
				successes = append(successes, success{node, time.Now()})
				mu.Unlock()
				if done.Add(1) == killAt {
					killOnce.Do(func() {
						nodes[1].kill()
						members[0].Kill()
						killed <- time.Now()
					})
				}
			}
		})
	}
	// Replays: every TPM-signed token that authenticated is sent again to a node
	// directly; none may be accepted (CONNACK 5 "not authorized", or 3 once
	// this address has spent its budget of refused CONNECTs).
	var replays, refused atomic.Int64
	replayDone := make(chan struct{})
	go func() {
		defer close(replayDone)
		for tok := range tokens {
			id := tokenID(tok)
			for _, n := range []int{0, 2} {
				user := sec.IDScope + "/registrations/" + id + "/api-version=2021-06-01"
				code, err := rawConnect(nodes[n].mqtt, id, user, tok)
				if err != nil {
					continue
				}
				replays.Add(1)
				if code != 0 { // 5 not authorized, or 3 once the address's refusal budget is spent
					refused.Add(1)
				}
			}
		}
	}()
	wg.Wait()
	close(tokens)
	<-replayDone
	var killTime time.Time
	select {
	case killTime = <-killed:
	default:
		t.Fatal("the flood ended before the kills")
	}

	// Every device that kept retrying is assigned, every round.
	for _, d := range devs {
		if assigned[d.id] != rounds {
			t.Errorf("%s assigned %d of %d times", d.id, assigned[d.id], rounds)
		}
	}
	// Every acknowledged registration is present, once.
	for _, d := range devs {
		r, err := st.GetRegistration(ctx, d.id)
		if err != nil || r.Status != store.RegistrationAssigned || r.AssignedHub != e2eHub {
			t.Errorf("registration of %s: %+v %v", d.id, r, err)
		}
	}
	if n, err := st.CountRegistrations(ctx); err != nil || n != len(devs) {
		t.Errorf("registrations in etcd: %d %v, want %d", n, err, len(devs))
	}
	if err := st.Check(ctx); err != nil {
		t.Errorf("store check after the kills: %v", err)
	}
	// No challenge reference authenticated twice.
	cli := etcdtest.Client(t, eps[1:]...)
	used, err := cli.Get(ctx, "/e2e/c/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	tpmAuths := 0
	for _, n := range nodes {
		for _, line := range strings.Split(n.logs.String(), "\n") {
			if strings.Contains(line, "msg=authenticated") && strings.Contains(line, "method=tpm") {
				tpmAuths++
			}
		}
	}
	// Each authentication consumed a record of its own (a second use of a
	// reference finds the record and is refused); a node killed between
	// recording a use and logging it leaves a record without a log line.
	if int64(tpmAuths) > used.Count || used.Count-int64(tpmAuths) > 10 || tpmAuths < tpmDevices*rounds {
		t.Errorf("TPM authentications logged %d, single-use records %d, TPM provisionings %d", tpmAuths, used.Count, tpmDevices*rounds)
	}
	if replays.Load() == 0 || refused.Load() != replays.Load() {
		t.Errorf("replays of used challenges on other nodes: %d refused of %d", refused.Load(), replays.Load())
	}
	if lb.crossed.Load() < int64(tpmDevices*rounds) || lb.same.Load() != 0 {
		t.Errorf("TPM reconnects on another node: %d, on the challenge's node: %d", lb.crossed.Load(), lb.same.Load())
	}
	// The surviving nodes served before and after the kills.
	for _, n := range []int{0, 2} {
		before, after := 0, 0
		for _, s := range successes {
			if s.node != n {
				continue
			}
			if s.at.Before(killTime) {
				before++
			} else {
				after++
			}
		}
		if before == 0 || after == 0 {
			t.Errorf("node %d finished %d provisionings before the kills and %d after", n, before, after)
		}
		if code := readyz(t, nodes[n], rootCAs); code != http.StatusOK {
			t.Errorf("node %d /readyz: %d", n, code)
		}
	}
	t.Logf("%d provisionings (%d devices x %d), %d TPM authentications, %d replays refused, %d reconnects crossed nodes, connections per node %d/%d/%d",
		len(successes), len(devs), rounds, tpmAuths, refused.Load(), lb.crossed.Load(), lb.served[0].Load(), lb.served[1].Load(), lb.served[2].Load())
}

// tokenID is the registration id a device SAS token is for.
func tokenID(tok string) string {
	i := strings.Index(tok, "registrations%2F")
	if i < 0 {
		return ""
	}
	rest := tok[i+len("registrations%2F"):]
	if j := strings.IndexByte(rest, '&'); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

// splitHostPort splits a loopback address.
func splitHostPort(t testing.TB, addr string) (string, int) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	return host, n
}

// clusterCAs trusts the cluster's development CA.
func (p *dpsdProc) clusterCAs(secrets string) *x509.CertPool {
	p.t.Helper()
	pem, err := os.ReadFile(filepath.Join(secrets, datadir.CACertFile))
	if err != nil {
		p.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		p.t.Fatal("no CA certificate")
	}
	return pool
}

// readyz GETs the node's /readyz.
func readyz(t testing.TB, p *dpsdProc, roots *x509.CertPool) int {
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	res, err := hc.Get("https://" + p.api + "/readyz")
	if err != nil {
		t.Errorf("readyz: %v", err)
		return 0
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode
}
