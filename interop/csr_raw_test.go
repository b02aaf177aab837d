package interop

// The register requests of the two Azure clients that send a certificate
// signing request, byte for byte as their sources build them, on a raw MQTT
// connection (internal/testkit/mqtttest), and their answers read the way
// those clients read them:
//
//   - IoT Edge's identity service (Azure/iot-identity-service, branch
//     feature/dps_certs, api-version 2021-11-01-preview): serde writes
//     {"registrationId":…,"clientCertificateCsr":…} in declaration order
//     with no white space; the CSR is standard base64 of DER (P-256,
//     subject CN = registration id, SHA-256; the one below was made with
//     OpenSSL the same way). It reads issuedClientCertificate as a PEM stack
//     whose first certificate names the device, needs assignedHub and
//     deviceId in every assigned state, and registers again without the
//     CSR when a failure's message is exactly "Device sent CSR but it is not
//     configured in the service.".
//   - the Embedded C SDK's CSR preview (Azure/azure-sdk-for-c,
//     feature/dps-csr-preview, api-version 2025-07-01-preview): its test
//     expects exactly {"registrationId":"<id>","csr":"<csr>"}; it copies at
//     most three issuedCertificateChain strings, raw (no JSON unescaping), into a
//     fixed array.
//
// IoT Edge speaks HTTPS to the cloud; dpsd serves the same bodies over its
// MQTT topics, which is where these requests go here.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
	"github.com/tpmdps/dpsd/issuer"
)

// edgeCSR is the clientCertificateCsr of IoT Edge's register body for
// registration id my-edge-device (see the file comment).
const edgeCSR = "MIHTMHsCAQAwGTEXMBUGA1UEAwwObXktZWRnZS1kZXZpY2UwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATs6ckj27wDQlc/9LfkCV8F3m7E6mjMq5igusbTV29+tiUf0tyl2zY6WpU1Pv0V1K3vPVEo1qARYQULS9Zitf7moAAwCgYIKoZIzj0EAwIDSAAwRQIgfGdKc/kQfUIqUhVkT2HKQevaynC8/HDQ1KdVKs4telkCIQDxZpMhfpYs4faoLkH7LfWaV91AvXhzBg4EpDhXFdoPvA=="

// rawDevice is a symmetric-key device on a raw MQTT connection.
type rawDevice struct {
	t     *testing.T
	c     *mqtttest.Conn
	rid   int
	id    string
	scope string
}

// connectRaw connects id with a SAS token signed with key, username
// api-version apiVersion, and subscribes to the answers.
func connectRaw(t *testing.T, srv *dpsdtest.Server, id, key, apiVersion string) *rawDevice {
	t.Helper()
	raw, _ := base64.StdEncoding.DecodeString(key)
	c := mqtttest.Dial(t, srv.TCPAddr)
	tok := attest.SignSAS(raw, attest.RegistrationResource(srv.IDScope, id), time.Now().Add(30*time.Second), "registration")
	if code, _ := c.Connect(id, srv.IDScope+"/registrations/"+id+"/api-version="+apiVersion, tok, true, 0); code != 0 {
		t.Fatalf("%s: CONNACK %d", id, code)
	}
	if codes := c.Subscribe(1, "$dps/registrations/res/#"); codes[0] != 1 {
		t.Fatalf("SUBACK %v", codes)
	}
	return &rawDevice{t: t, c: c, id: id, scope: srv.IDScope}
}

var statusOf = regexp.MustCompile(`^\$dps/registrations/res/(\d+)/\?\$rid=(\d+)`)

// request publishes body on the request topic and returns the answer's
// status and body.
func (d *rawDevice) request(topic string, body []byte) (int, []byte) {
	d.t.Helper()
	d.c.Publish(topic, 1, body)
	for {
		p := d.c.Read()
		if p.Type() != packets.Publish { // the PUBACK of the request comes first
			continue
		}
		if p.FixedHeader.Qos == 1 {
			d.c.Puback(p.PacketID)
		}
		m := statusOf.FindStringSubmatch(p.TopicName)
		if m == nil || m[2] != fmt.Sprint(d.rid) {
			d.t.Fatalf("answer on %q to request %d", p.TopicName, d.rid)
		}
		var status int
		fmt.Sscan(m[1], &status)
		return status, p.Payload
	}
}

// register sends a register body and polls the operation to its end,
// returning the final answer's raw body.
func (d *rawDevice) register(body string) []byte {
	d.t.Helper()
	d.rid++
	status, ans := d.request(fmt.Sprintf("$dps/registrations/PUT/iotdps-register/?$rid=%d", d.rid), []byte(body))
	var op struct {
		OperationID string `json:"operationId"`
		Status      string `json:"status"`
	}
	if err := json.Unmarshal(ans, &op); status != 202 || err != nil || op.OperationID == "" || op.Status != "assigning" {
		d.t.Fatalf("register: %d %s", status, ans)
	}
	d.rid++
	status, ans = d.request(fmt.Sprintf("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=%d&operationId=%s", d.rid, op.OperationID), nil)
	if status != 200 {
		d.t.Fatalf("poll: %d %s", status, ans)
	}
	return ans
}

// edgeAnswer is what IoT Edge's serde model reads from an operation status
// (schema.rs: tag "status", content "registrationState"; Device with
// required assignedHub and deviceId; ServiceError with code/errorCode and
// message/errorMessage).
type edgeAnswer struct {
	Status            string `json:"status"`
	RegistrationState struct {
		RegistrationID          string  `json:"registrationId"`
		AssignedHub             *string `json:"assignedHub"`
		DeviceID                *string `json:"deviceId"`
		IssuedClientCertificate *string `json:"issuedClientCertificate"`
		ErrorCode               *int32  `json:"errorCode"`
		ErrorMessage            string  `json:"errorMessage"`
	} `json:"registrationState"`
}

// TestIoTEdgeCSRRegister: IoT Edge's register with its recorded CSR. With
// no credential policy on the enrollment the operation fails with the
// message Edge matches, and Edge's retry without the CSR is assigned; once
// the enrollment issues, the same request gets a PEM certificate for the
// CSR's key, leaf first, naming the device.
func TestIoTEdgeCSRRegister(t *testing.T) {
	ca, err := issuer.NewCA(issuer.KeyECDSAP384, pkixName("dpsd issuing CA edge"), time.Now(), 24*time.Hour*365)
	if err != nil {
		t.Fatal(err)
	}
	srv := dpsdtest.Start(t, dpsdtest.Options{RetryAfter: -1, Issuer: ca})
	key := randomKey(t)
	putEnrollment(t, srv, symmetricEnrollment("my-edge-device", key))
	d := connectRaw(t, srv, "my-edge-device", key, "2021-11-01-preview")
	withCSR := `{"registrationId":"my-edge-device","clientCertificateCsr":"` + edgeCSR + `"}`

	var a edgeAnswer
	raw := d.register(withCSR)
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatal(err)
	}
	st := a.RegistrationState
	if a.Status != "failed" || st.ErrorCode == nil || *st.ErrorCode != 400000 ||
		st.ErrorMessage != "Device sent CSR but it is not configured in the service." || st.RegistrationID != "my-edge-device" {
		t.Fatalf("not configured: %s", raw)
	}
	// Edge registers again without the CSR.
	a = edgeAnswer{}
	raw = d.register(`{"registrationId":"my-edge-device"}`)
	if err := json.Unmarshal(raw, &a); err != nil || a.Status != "assigned" || a.RegistrationState.AssignedHub == nil ||
		a.RegistrationState.DeviceID == nil || a.RegistrationState.IssuedClientCertificate != nil {
		t.Fatalf("retry without the CSR: %s %v", raw, err)
	}

	en := symmetricEnrollment("my-edge-device", key)
	en.CredentialPolicyName = "edge"
	putEnrollment(t, srv, en)
	a = edgeAnswer{}
	raw = d.register(withCSR)
	if err := json.Unmarshal(raw, &a); err != nil || a.Status != "assigned" || a.RegistrationState.AssignedHub == nil ||
		a.RegistrationState.DeviceID == nil || a.RegistrationState.IssuedClientCertificate == nil {
		t.Fatalf("issuing: %s %v", raw, err)
	}
	// X509::stack_from_pem: every block a certificate, the first the device's.
	var stack []*x509.Certificate
	rest := []byte(*a.RegistrationState.IssuedClientCertificate)
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil || b.Type != "CERTIFICATE" {
			t.Fatalf("PEM block %s: %v", b.Type, err)
		}
		stack = append(stack, c)
	}
	if strings.TrimSpace(string(rest)) != "" || len(stack) != 2 || !stack[1].Equal(ca.Certificate()) {
		t.Fatalf("issuedClientCertificate is not leaf and CA in PEM: %q", *a.RegistrationState.IssuedClientCertificate)
	}
	csr, err := issuer.ParseCSR(edgeCSR)
	if err != nil {
		t.Fatal(err)
	}
	if leaf := stack[0]; leaf.Subject.CommonName != "my-edge-device" || !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(csr.PublicKey) {
		t.Fatalf("leaf %s is not for the CSR's key and name", leaf.Subject)
	}
	if err := stack[0].CheckSignatureFrom(ca.Certificate()); err != nil {
		t.Fatal(err)
	}
	rec, err := srv.Store.GetRegistration(t.Context(), "my-edge-device")
	if err != nil || rec.Certificate == nil || !rec.Certificate.MatchesCertificate(stack[0]) {
		t.Fatalf("recorded %+v, %v", rec, err)
	}
}

// TestEmbeddedCCSRRegister: the Embedded C SDK's register body, and the
// answer as its parser takes it: issuedCertificateChain, three raw base64
// DER strings (an operator's intermediate and root behind the leaf), each
// the issuer of the one before.
func TestEmbeddedCCSRRegister(t *testing.T) {
	ca := newIssuer(t, "intermediate and root")
	srv := dpsdtest.Start(t, dpsdtest.Options{RetryAfter: -1, Issuer: ca})
	key := randomKey(t)
	en := symmetricEnrollment("c-sdk-device", key)
	en.CredentialPolicyName = "c-devices"
	putEnrollment(t, srv, en)
	_, csrDER := csrFor(t, "c-sdk-device")
	d := connectRaw(t, srv, "c-sdk-device", key, "2025-07-01-preview")
	raw := d.register(`{"registrationId":"c-sdk-device","csr":"` + base64.StdEncoding.EncodeToString(csrDER) + `"}`)

	// The C parser takes each array element's raw JSON text: no escapes.
	m := regexp.MustCompile(`"issuedCertificateChain":\[([^\]]*)\]`).FindSubmatch(raw)
	if m == nil {
		t.Fatalf("no issuedCertificateChain array: %s", raw)
	}
	elems := strings.Split(string(m[1]), ",")
	if len(elems) != issuer.MaxChainLength {
		t.Fatalf("%d elements, want 3", len(elems))
	}
	var chain []*x509.Certificate
	for i, e := range elems {
		if len(e) < 2 || e[0] != '"' || e[len(e)-1] != '"' || strings.ContainsAny(e[1:len(e)-1], "\\\"") {
			t.Fatalf("element %d is not a bare JSON string: %s", i, e)
		}
		der, err := base64.StdEncoding.DecodeString(e[1 : len(e)-1])
		if err != nil {
			t.Fatalf("element %d: %v", i, err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("element %d: %v", i, err)
		}
		chain = append(chain, c)
	}
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			t.Fatalf("element %d is not issued by element %d: %v", i, i+1, err)
		}
	}
	if chain[0].Subject.CommonName != "c-sdk-device" || chain[2].CheckSignatureFrom(chain[2]) != nil {
		t.Fatalf("leaf %s, last %s (not a root)", chain[0].Subject, chain[2].Subject)
	}
	if strings.Contains(string(raw), "issuedClientCertificate") {
		t.Fatal("answered in both shapes")
	}
}

func pkixName(cn string) pkix.Name { return pkix.Name{CommonName: cn} }

// csrFor returns a fresh P-256 key and a CSR for it with subject CN cn, as
// the C SDK's sample makes it (openssl req -subj /CN=<id> -outform DER).
func csrFor(t *testing.T, cn string) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}
