package x509e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/devca"
	"github.com/tpmdps/dpsd/store"
)

// cred is a device certificate (chain PEM, leaf first) and its key.
type cred struct {
	certPEM, keyPEM []byte
	leaf            *x509.Certificate
}

func selfSigned(t *testing.T, cn string) cred {
	t.Helper()
	now := time.Now()
	c, k, err := devca.SelfSignedClient(cn, now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return newCred(t, c, k)
}

func issued(t *testing.T, ca *devca.CA, cn string, notBefore, notAfter time.Time, chain ...*devca.CA) cred {
	t.Helper()
	c, k, err := ca.IssueClient(cn, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range chain {
		c = append(c, i.CertPEM()...)
	}
	return newCred(t, c, k)
}

func newCred(t *testing.T, certPEM, keyPEM []byte) cred {
	t.Helper()
	leaf, err := devca.ParseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cred{certPEM: certPEM, keyPEM: keyPEM, leaf: leaf}
}

func (c cred) attestation(t *testing.T) *device.X509 {
	t.Helper()
	x, err := device.NewX509(c.certPEM, c.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func firstPEM(c cred) string { return string(devca.EncodeCert(c.leaf.Raw)) }

func enrollIndividual(t *testing.T, srv *dpsdtest.Server, regID string, c cred, status string) {
	t.Helper()
	_, err := srv.Store.PutEnrollment(context.Background(), &store.Enrollment{
		RegistrationID: regID,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
				ClientCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: firstPEM(c)}}}},
			ProvisioningStatus: status,
		},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
}

func enrollGroup(t *testing.T, srv *dpsdtest.Server, id string, ca *devca.CA, status string) {
	t.Helper()
	_, err := srv.Store.PutGroup(context.Background(), &store.Group{
		EnrollmentGroupID: id,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
				SigningCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: string(ca.CertPEM())}}}},
			ProvisioningStatus: status,
		},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
}

// config is a device Config for srv over tr (TLS trusts the test CA).
func config(t *testing.T, srv *dpsdtest.Server, tr device.Transport, att device.Attestation) device.Config {
	t.Helper()
	addr := srv.TLSAddr
	if tr == device.TransportWebSocket {
		addr = srv.WSAddr
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return device.Config{Host: "localhost", Port: p, Transport: tr, RootCAs: srv.RootCAs, IDScope: srv.IDScope,
		Attestation: att, Timeout: 30 * time.Second, PollInterval: 50 * time.Millisecond, ConnectTimeout: 10 * time.Second}
}

func provision(t *testing.T, cfg device.Config) (*device.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return device.Provision(ctx, cfg)
}

// x509State is registrationState.x509 as a device receives it.
type x509State struct {
	CertificateInfo *struct {
		SubjectName      string `json:"subjectName"`
		SHA256Thumbprint string `json:"sha256Thumbprint"`
		IssuerName       string `json:"issuerName"`
	} `json:"certificateInfo"`
	EnrollmentGroupID      string `json:"enrollmentGroupId"`
	SigningCertificateInfo *struct {
		SubjectName string `json:"subjectName"`
	} `json:"signingCertificateInfo"`
}

func parseX509(t *testing.T, res *device.Result) x509State {
	t.Helper()
	var s x509State
	if len(res.State.X509) == 0 {
		t.Fatalf("no registrationState.x509 in %s", res.RegistrationState)
	}
	if err := json.Unmarshal(res.State.X509, &s); err != nil {
		t.Fatalf("registrationState.x509 %s: %v", res.State.X509, err)
	}
	if s.CertificateInfo == nil {
		t.Fatalf("no certificateInfo in %s", res.State.X509)
	}
	return s
}

func TestIndividualTLSAndWSS(t *testing.T) {
	srv := dpsdtest.Start(t, dpsdtest.Options{WebSocket: true, RetryAfter: -1})
	for _, tr := range []device.Transport{device.TransportTLS, device.TransportWebSocket} {
		t.Run(tr.String(), func(t *testing.T) {
			regID := "x509-" + tr.String()
			c := selfSigned(t, regID)
			enrollIndividual(t, srv, regID, c, store.StatusEnabled)
			// No RegistrationID: the device takes it from its certificate's CN.
			res, err := provision(t, config(t, srv, tr, c.attestation(t)))
			if err != nil {
				t.Fatalf("provision: %v", err)
			}
			if res.Status != device.StatusAssigned || res.AssignedHub != dpsdtest.DefaultHub || res.DeviceID != regID || res.RegistrationID != regID {
				t.Fatalf("result %+v", res)
			}
			s := parseX509(t, res)
			if s.CertificateInfo.SubjectName != "CN="+regID || s.EnrollmentGroupID != "" || s.SigningCertificateInfo != nil ||
				!strings.EqualFold(s.CertificateInfo.SHA256Thumbprint, sha256Hex(c.leaf)) {
				t.Fatalf("x509 %s", res.State.X509)
			}
			rec, err := srv.Store.GetRegistration(context.Background(), regID)
			if err != nil || rec.AttestationType != store.AttestationX509 || rec.AssignedHub != dpsdtest.DefaultHub {
				t.Fatalf("registration record %+v, %v", rec, err)
			}
		})
	}
}

func TestGroupWithIntermediate(t *testing.T) {
	srv := dpsdtest.Start(t, dpsdtest.Options{WebSocket: true, RetryAfter: -1})
	now := time.Now()
	root, err := devca.NewRootCA("fleet root", now, 24*time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate("fleet intermediate", now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	enrollGroup(t, srv, "fleet", root, store.StatusEnabled)
	for _, tr := range []device.Transport{device.TransportTLS, device.TransportWebSocket} {
		regID := "sensor-" + tr.String()
		c := issued(t, inter, regID, now.Add(-time.Hour), now.Add(time.Hour), inter)
		res, err := provision(t, config(t, srv, tr, c.attestation(t)))
		if err != nil {
			t.Fatalf("%v: provision: %v", tr, err)
		}
		s := parseX509(t, res)
		if res.Status != device.StatusAssigned || s.EnrollmentGroupID != "fleet" || s.SigningCertificateInfo == nil ||
			s.SigningCertificateInfo.SubjectName != root.Cert.Subject.String() || s.CertificateInfo.IssuerName != inter.Cert.Subject.String() {
			t.Fatalf("%v: result %+v x509 %s", tr, res, res.State.X509)
		}
		rec, err := srv.Store.GetRegistration(context.Background(), regID)
		if err != nil || rec.EnrollmentGroupID != "fleet" {
			t.Fatalf("%v: registration record %+v, %v", tr, rec, err)
		}
	}
}

func TestDisabled(t *testing.T) {
	srv := dpsdtest.Start(t, dpsdtest.Options{RetryAfter: -1})
	c := selfSigned(t, "x509-off")
	enrollIndividual(t, srv, "x509-off", c, store.StatusDisabled)
	res, err := provision(t, config(t, srv, device.TransportTLS, c.attestation(t)))
	if !errors.Is(err, device.ErrNotAssigned) || res == nil || res.Status != device.StatusDisabled || res.AssignedHub != "" {
		t.Fatalf("disabled enrollment: %+v, %v", res, err)
	}
}

// connectRaw makes one MQTT 3.1.1 CONNECT over TLS with a client
// certificate and no password, and returns the CONNECT error.
func connectRaw(t *testing.T, srv *dpsdtest.Server, regID string, c cred) error {
	t.Helper()
	kp, err := tls.X509KeyPair(c.certPEM, c.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	tc := srv.TLSConfig()
	tc.Certificates = []tls.Certificate{kp}
	opts := mqtt.NewClientOptions().
		AddBroker("tls://" + srv.TLSAddr).
		SetTLSConfig(tc).
		SetClientID(regID).
		SetUsername(srv.IDScope + "/registrations/" + regID + "/api-version=2019-03-31").
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second)
	cl := mqtt.NewClient(opts)
	tok := cl.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		t.Fatalf("%s: CONNECT did not finish", regID)
	}
	if tok.Error() == nil {
		cl.Disconnect(0)
	}
	return tok.Error()
}

func TestRefusedAtConnect(t *testing.T) {
	srv := dpsdtest.Start(t, dpsdtest.Options{WebSocket: true, RetryAfter: -1})
	now := time.Now()
	root, err := devca.NewRootCA("fleet root", now, 24*time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := devca.NewRootCA("rogue root", now, 24*time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	enrollGroup(t, srv, "fleet", root, store.StatusEnabled)
	pinned := selfSigned(t, "x509-pinned")
	enrollIndividual(t, srv, "x509-pinned", pinned, store.StatusEnabled)

	// The control: a good certificate connects.
	if err := connectRaw(t, srv, "x509-good", issued(t, root, "x509-good", now.Add(-time.Hour), now.Add(time.Hour))); err != nil {
		t.Fatalf("good certificate: %v", err)
	}
	cases := []struct {
		name  string
		regID string
		c     cred
	}{
		{"unknown self-signed", "x509-unknown", selfSigned(t, "x509-unknown")},
		{"CN differs", "x509-a", issued(t, root, "x509-b", now.Add(-time.Hour), now.Add(time.Hour))},
		{"expired", "x509-old", issued(t, root, "x509-old", now.Add(-2*time.Hour), now.Add(-time.Minute))},
		{"other CA", "x509-rogue", issued(t, rogue, "x509-rogue", now.Add(-time.Hour), now.Add(time.Hour))},
		{"pinned thumbprint mismatch", "x509-pinned", selfSigned(t, "x509-pinned")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := connectRaw(t, srv, c.regID, c.c)
			if !errors.Is(err, packets.ErrorRefusedNotAuthorised) {
				t.Fatalf("CONNECT: %v, want CONNACK 5 (not authorized)", err)
			}
		})
	}
	// Through the device library over WSS the refusal is a CONNECT refusal.
	_, err = provision(t, config(t, srv, device.TransportWebSocket, selfSigned(t, "x509-unknown").attestation(t)))
	var de *device.Error
	if !errors.As(err, &de) || !errors.Is(err, device.ErrConnectRefused) || !de.Refused() {
		t.Fatalf("wss refusal: %v", err)
	}
}
