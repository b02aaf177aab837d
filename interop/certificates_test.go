package interop

// Operational certificates issued by dpsd, proven on Eclipse Mosquitto
// (Debian's mosquitto broker, started per test by mosquittotest with
// require_certificate, use_identity_as_username, the issuing chain as
// cafile, and the ACL "pattern readwrite devices/%u/#"): a TPM device on the
// reference simulator and one on swtpm (keys made in the TPM, TLS signed by
// it), a symmetric-key device (a software key, with the mosquitto command-
// line clients) and an X.509 device (an RSA key) each provision with a CSR
// and then publish and subscribe on the broker with the certificate; the
// broker refuses a certificate of another CA, an expired one and none, and
// its ACL keeps a device's certificate out of another device's topics.
// Each runs against two issuers: a self-signed CA as dpsd generates it, and
// an operator's intermediate with its root (chains of three).

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/device/tpmtransport"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/internal/swtpmtest"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/mosquittotest"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
	"github.com/tpmdps/dpsd/issuer"
	"github.com/tpmdps/dpsd/store"
)

// deviceACL keeps each device, named by its certificate's CN, under its
// own topics (docs/operations.md's example).
const deviceACL = "pattern readwrite devices/%u/#"

// issuerSetups are the two kinds of issuing CA the broker tests run with.
func issuerSetups() []string { return []string{"generated CA", "intermediate and root"} }

// newIssuer makes the issuing CA of a setup: a self-signed P-256 CA (what
// dpsd generates) or an operator's P-256 intermediate under a P-384 root.
func newIssuer(t *testing.T, setup string) *issuer.CA {
	t.Helper()
	now := time.Now()
	if setup == "generated CA" {
		ca, err := issuer.NewCA(issuer.KeyECDSAP256, pkix.Name{CommonName: "dpsd issuing CA test", Organization: []string{"dpsd"}}, now, 24*time.Hour*3650)
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	rootKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(11), Subject: pkix.Name{CommonName: "operator root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour * 3650), IsCA: true, BasicConstraintsValid: true,
		MaxPathLen: 1, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	interTmpl := &x509.Certificate{SerialNumber: big.NewInt(12), Subject: pkix.Name{CommonName: "operator issuing CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour * 1000), IsCA: true, BasicConstraintsValid: true,
		MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, root, &interKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(interKey)
	ca, err := issuer.ParseCA(append(pemCert(interDER), pemCert(rootDER)...), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// certEnv is a dpsd issuing with ca and a mosquitto trusting ca's chain.
type certEnv struct {
	srv    *dpsdtest.Server
	ca     *issuer.CA
	broker *mosquittotest.Broker
	dir    string
}

func newCertEnv(t *testing.T, setup string) *certEnv {
	t.Helper()
	ca := newIssuer(t, setup)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "dpsd-devices.pem") // what `dpsd ca export` prints: the CA, then its root
	if err := os.WriteFile(caFile, ca.ChainPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return &certEnv{
		srv:    dpsdtest.Start(t, dpsdtest.Options{RetryAfter: -1, Issuer: ca}),
		ca:     ca,
		broker: mosquittotest.Start(t, mosquittotest.Options{CAFile: caFile, ACL: deviceACL}),
		dir:    dir,
	}
}

// provision provisions a device over plain MQTT asking for a certificate
// for key, and checks the chain it gets: leaf first, then the issuer's chain.
func (e *certEnv) provision(t *testing.T, regID string, att device.Attestation, key crypto.Signer, transport device.Transport) *device.Result {
	t.Helper()
	addr := e.srv.TCPAddr
	if transport == device.TransportTLS {
		addr = e.srv.TLSAddr
	}
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	res, err := device.Provision(context.Background(), device.Config{Host: host, Port: p, Transport: transport, RootCAs: e.srv.RootCAs,
		IDScope: e.srv.IDScope, RegistrationID: regID, Attestation: att, CertificateKey: key, Timeout: 60 * time.Second})
	if err != nil {
		t.Fatalf("provision %s: %v", regID, err)
	}
	want := e.ca.Chain()
	if len(res.CertificateChain) != 1+len(want) || len(res.CertificateChain) > issuer.MaxChainLength {
		t.Fatalf("%s: a chain of %d, want %d", regID, len(res.CertificateChain), 1+len(want))
	}
	for i, c := range want {
		if !res.CertificateChain[1+i].Equal(c) {
			t.Fatalf("%s: chain element %d is not the issuer's", regID, 1+i)
		}
	}
	return res
}

// tlsCert is the client certificate a device presents: the leaf and its
// intermediates (the broker has the root), with key.
func tlsCert(res *device.Result, key crypto.Signer) tls.Certificate {
	var c tls.Certificate
	for rest := res.CertificatePEM(); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c.Certificate = append(c.Certificate, b.Bytes)
	}
	c.PrivateKey, c.Leaf = key, res.CertificateChain[0]
	return c
}

// roundTrip connects to the broker with cert as clientID, subscribes to
// the device's topics, publishes there and reads the message back: the
// broker took the certificate, and the CN as username for the ACL.
func (e *certEnv) roundTrip(t *testing.T, regID, clientID string, cert tls.Certificate) {
	t.Helper()
	c := mqtttest.DialTLS(t, e.broker.Addr, e.broker.ClientTLS(&cert))
	if code, _ := c.Connect(clientID, "", "", true, 30); code != 0 {
		t.Fatalf("%s: CONNACK %d\n%s", regID, code, e.broker.Log())
	}
	if codes := c.Subscribe(1, "devices/"+regID+"/#"); len(codes) != 1 || codes[0] != 1 {
		t.Fatalf("%s: SUBACK %v", regID, codes)
	}
	c.Publish("devices/"+regID+"/telemetry", 0, []byte("hello from "+regID))
	if topic, payload := c.ReadResponse(); topic != "devices/"+regID+"/telemetry" || string(payload) != "hello from "+regID {
		t.Fatalf("%s: got %s %q", regID, topic, payload)
	}
	c.Disconnect()
	testkit.Await(t, "the broker's log of "+clientID, func() bool {
		return strings.Contains(e.broker.Log(), "as "+clientID+" ") && strings.Contains(e.broker.Log(), "u'"+regID+"'")
	})
}

// enrollTPMIssuing enrolls a TPM's EK with a credential policy.
func enrollTPMIssuing(t *testing.T, srv *dpsdtest.Server, att *device.TPM) string {
	t.Helper()
	ek, err := att.EndorsementKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	regID := attest.RegistrationID(ek)
	putEnrollment(t, srv, &store.Enrollment{RegistrationID: regID, EnrollmentSettings: store.EnrollmentSettings{
		Attestation:          store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: base64.StdEncoding.EncodeToString(ek)}},
		CredentialPolicyName: "tpm-devices",
	}})
	return regID
}

// tpmDeviceOnMosquitto provisions the TPM device tpm with a certificate
// key made in that TPM, persists the key at devtpm.CertKeyHandle, then
// talks to the broker with the certificate, the handshake signed by the
// key at the handle.
func tpmDeviceOnMosquitto(t *testing.T, e *certEnv, tpm transport.TPM) {
	t.Helper()
	att := &device.TPM{Device: tpm}
	regID := enrollTPMIssuing(t, e.srv, att)
	key, err := att.NewCertificateKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	res := e.provision(t, regID, att, key, device.TransportTLS)
	if err := key.Persist(devtpm.CertKeyHandle); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = devtpm.EvictPersistent(tpm, devtpm.CertKeyHandle) })
	held, err := devtpm.OpenSigningKey(tpm, devtpm.CertKeyHandle)
	if err != nil {
		t.Fatal(err)
	}
	e.roundTrip(t, regID, "tpm-client", tlsCert(res, held))
}

func TestMosquittoTPMSimulator(t *testing.T) {
	for _, setup := range issuerSetups() {
		t.Run(setup, func(t *testing.T) {
			tpmDeviceOnMosquitto(t, newCertEnv(t, setup), tpmsim.Open(t))
		})
	}
}

func TestMosquittoTPMSwtpm(t *testing.T) {
	for _, setup := range issuerSetups() {
		t.Run(setup, func(t *testing.T) {
			sw := swtpmtest.Start(t)
			tpm, err := tpmtransport.Open(context.Background(), sw.Selector())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tpm.Close() })
			tpmDeviceOnMosquitto(t, newCertEnv(t, setup), tpm)
		})
	}
}

// TestMosquittoSymmetricKey: a symmetric-key device with a software key
// writes its certificate and key to files, and the mosquitto command-line
// clients (OpenSSL) subscribe and publish with them.
func TestMosquittoSymmetricKey(t *testing.T) {
	for _, n := range []string{"mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s: %v (apt-get install mosquitto-clients; scripts/test.sh does)", n, err)
		}
	}
	for _, setup := range issuerSetups() {
		t.Run(setup, func(t *testing.T) {
			e := newCertEnv(t, setup)
			regID, devKey := "meter-7", randomKey(t)
			en := symmetricEnrollment(regID, devKey)
			en.CredentialPolicyName = "meters"
			putEnrollment(t, e.srv, en)
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := base64.StdEncoding.DecodeString(devKey)
			res := e.provision(t, regID, &device.SymmetricKey{Key: raw}, key, device.TransportTCP)
			certFile, keyFile := filepath.Join(e.dir, regID+".pem"), filepath.Join(e.dir, regID+".key")
			keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
			if err := os.WriteFile(certFile, res.CertificatePEM(), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
				t.Fatal(err)
			}
			_, port, _ := net.SplitHostPort(e.broker.Addr)
			tlsArgs := []string{"-h", "localhost", "-p", port, "--cafile", e.broker.ServerCAFile, "--cert", certFile, "--key", keyFile, "-V", "mqttv311"}
			sub := exec.Command("mosquitto_sub", append(tlsArgs, "-i", "meter-sub", "-t", "devices/"+regID+"/#", "-C", "1", "-W", "30", "-d")...)
			var subOut testkit.LogBuffer
			sub.Stdout, sub.Stderr = &subOut, &subOut
			if err := sub.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- sub.Wait() }()
			t.Cleanup(func() { _ = sub.Process.Kill() })
			// mosquitto_sub's own output is buffered until it exits: the
			// broker's log says when it has subscribed.
			testkit.Await(t, "mosquitto_sub's subscription", func() bool {
				return strings.Contains(e.broker.Log(), "Sending SUBACK to meter-sub")
			})
			pub := exec.Command("mosquitto_pub", append(tlsArgs, "-i", "meter-pub", "-t", "devices/"+regID+"/reading", "-m", "42 kWh", "-q", "1")...)
			if out, err := pub.CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_pub: %v\n%s\n%s", err, out, e.broker.Log())
			}
			if err := <-done; err != nil {
				t.Fatalf("mosquitto_sub: %v\n%s", err, subOut.String())
			}
			if !strings.Contains(subOut.String(), "42 kWh") {
				t.Fatalf("mosquitto_sub did not get the message:\n%s", subOut.String())
			}
			if log := e.broker.Log(); !strings.Contains(log, "u'"+regID+"'") {
				t.Fatalf("the broker did not take the CN as username:\n%s", log)
			}
		})
	}
}

// TestMosquittoX509: a device of an X.509 group (its onboarding
// certificate from the fleet's CA) gets a certificate for a new RSA key.
func TestMosquittoX509(t *testing.T) {
	for _, setup := range issuerSetups() {
		t.Run(setup, func(t *testing.T) {
			e := newCertEnv(t, setup)
			now := time.Now()
			fleet, err := devca.NewRootCA("fleet onboarding CA", now, time.Hour, 0)
			if err != nil {
				t.Fatal(err)
			}
			putGroup(t, e.srv, &store.Group{EnrollmentGroupID: "fleet", EnrollmentSettings: store.EnrollmentSettings{
				Attestation: store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
					SigningCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: string(fleet.CertPEM())}}}},
				CredentialPolicyName: "fleet",
			}})
			onbCert, onbKey, err := fleet.IssueClient("cam-3", now.Add(-time.Minute), now.Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			onboarding, err := device.NewX509(onbCert, onbKey)
			if err != nil {
				t.Fatal(err)
			}
			key, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				t.Fatal(err)
			}
			res := e.provision(t, "cam-3", onboarding, key, device.TransportTLS)
			if res.CertificateChain[0].PublicKeyAlgorithm != x509.RSA {
				t.Fatal("not a certificate for the RSA key")
			}
			e.roundTrip(t, "cam-3", "cam-3-client", tlsCert(res, key))
			// The onboarding certificate is not one the broker takes.
			onbPair, err := tls.X509KeyPair(onbCert, onbKey)
			if err != nil {
				t.Fatal(err)
			}
			e.refused(t, "the onboarding certificate", &onbPair, "unknown certificate authority")
		})
	}
}

// refused checks that the broker refuses cert (nil: none) in the TLS
// handshake, with the alert whose text holds alert. Over TLS 1.3 the
// client's half of the handshake completes before the broker has looked
// at the certificate, so its verdict arrives on the first read, before the
// client has sent anything.
func (e *certEnv) refused(t *testing.T, what string, cert *tls.Certificate, alert string) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: mqtttest.Wait}, "tcp", e.broker.Addr, e.broker.ClientTLS(cert))
	if err == nil {
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(mqtttest.Wait))
		var n int
		n, err = conn.Read(make([]byte, 1))
		if err == nil {
			t.Fatalf("%s: the broker sent %d bytes instead of refusing", what, n)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s: the broker accepted the handshake", what)
		}
	}
	if !strings.Contains(err.Error(), alert) {
		t.Fatalf("%s: refused with %v, want the alert %q", what, err, alert)
	}
}

// issueDirect has ca sign a certificate for cn and key directly, valid
// from notBefore to notAfter.
func issueDirect(t *testing.T, ca *issuer.CA, cn string, key crypto.Signer, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	chain, err := ca.Issue(context.Background(), issuer.Request{PublicKey: key.Public(), Subject: pkix.Name{CommonName: cn},
		NotBefore: notBefore, NotAfter: notAfter})
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain[:len(chain)-1] { // the root stays out, as devices send it
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// TestMosquittoRefuses: a certificate from another CA, an expired one
// from the right CA, and none at all fail the TLS handshake; a valid
// certificate for another id connects but the ACL keeps it out of the
// device's topics (MQTT 5: PUBACK 0x87; MQTT 3.1.1: dropped, PUBACK 0, and
// nothing delivered).
func TestMosquittoRefuses(t *testing.T) {
	e := newCertEnv(t, "generated CA")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()

	other, err := issuer.NewCA(issuer.KeyECDSAP256, pkix.Name{CommonName: "some other CA"}, now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCert := issueDirect(t, other, "dev-1", key, now.Add(-time.Minute), now.Add(time.Hour))
	e.refused(t, "a certificate from another CA", &otherCert, "unknown certificate authority")
	expired := issueDirect(t, e.ca, "dev-1", key, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	e.refused(t, "an expired certificate", &expired, "expired certificate")
	e.refused(t, "no certificate", nil, "certificate required")
	if !strings.Contains(e.broker.Log(), "certificate verify failed") {
		t.Fatalf("the broker logged no verification failure:\n%s", e.broker.Log())
	}

	// dev-1 and dev-2 both hold valid certificates (dev-1's issued through
	// dpsd, dev-2's straight from the CA: the broker cannot tell).
	key1 := devKeyPair(t)
	putEnrollment(t, e.srv, func() *store.Enrollment {
		en := symmetricEnrollment("dev-1", key1.b64)
		en.CredentialPolicyName = "p"
		return en
	}())
	res := e.provision(t, "dev-1", &device.SymmetricKey{Key: key1.raw}, key, device.TransportTCP)
	dev1 := tlsCert(res, key)
	key2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	dev2 := issueDirect(t, e.ca, "dev-2", key2, now.Add(-time.Minute), now.Add(time.Hour))

	// MQTT 5: the broker says no.
	v5 := mqtttest.DialTLS(t, e.broker.Addr, e.broker.ClientTLS(&dev2))
	v5.SetVersion(mqtttest.V5)
	if code, _ := v5.Connect("dev-2-v5", "", "", true, 30); code != 0 {
		t.Fatalf("dev-2 CONNACK %d", code)
	}
	id := v5.Publish("devices/dev-1/cmd", 1, []byte("forged"))
	if p := v5.Read(); p.Type() != packets.Puback || p.PacketID != id || p.ReasonCode != 0x87 {
		t.Fatalf("dev-2 publishing to dev-1's topic over MQTT 5: %v reason 0x%02x, want PUBACK 0x87 (not authorized)", p, p.ReasonCode)
	}
	own := v5.Publish("devices/dev-2/status", 1, []byte("ok"))
	// Success: 0x00, or 0x10 "no matching subscribers" (nobody listens there).
	if p := v5.Read(); p.Type() != packets.Puback || p.PacketID != own || (p.ReasonCode != 0 && p.ReasonCode != 0x10) {
		t.Fatalf("dev-2 publishing to its own topic: %v reason 0x%02x", p, p.ReasonCode)
	}

	// MQTT 3.1.1: dropped without a word; dev-1 receives nothing of it.
	// The broker handles packets in order, so a message dev-1 publishes
	// after dev-2's publish was acknowledged comes after anything dev-2's
	// could have caused: the first message dev-1 sees must be its own.
	sub := mqtttest.DialTLS(t, e.broker.Addr, e.broker.ClientTLS(&dev1))
	if code, _ := sub.Connect("dev-1-sub", "", "", true, 30); code != 0 {
		t.Fatalf("dev-1 CONNACK %d", code)
	}
	if codes := sub.Subscribe(1, "devices/dev-1/#"); codes[0] != 1 {
		t.Fatalf("SUBACK %v", codes)
	}
	v311 := mqtttest.DialTLS(t, e.broker.Addr, e.broker.ClientTLS(&dev2))
	if code, _ := v311.Connect("dev-2-v311", "", "", true, 30); code != 0 {
		t.Fatalf("dev-2 CONNACK %d", code)
	}
	id = v311.Publish("devices/dev-1/cmd", 1, []byte("forged"))
	if p := v311.Read(); p.Type() != packets.Puback || p.PacketID != id {
		t.Fatalf("dev-2 over MQTT 3.1.1: %v", p)
	}
	sub.Publish("devices/dev-1/marker", 1, []byte("mine"))
	for {
		p := sub.Read()
		if p.Type() == packets.Puback {
			continue
		}
		if p.Type() != packets.Publish || p.TopicName != "devices/dev-1/marker" {
			t.Fatalf("dev-1 received %s %q before its own message: the ACL let dev-2 in", p.TopicName, p.Payload)
		}
		break
	}
	testkit.Await(t, "the broker's log of the denied publishes", func() bool {
		log := e.broker.Log()
		return strings.Contains(log, "Denied PUBLISH from dev-2-v5") && strings.Contains(log, "Denied PUBLISH from dev-2-v311")
	})
}

// devKey is a symmetric device key, raw and base64.
type devKey struct {
	raw []byte
	b64 string
}

func devKeyPair(t *testing.T) devKey {
	b64 := randomKey(t)
	raw, _ := base64.StdEncoding.DecodeString(b64)
	return devKey{raw: raw, b64: b64}
}
