package api

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/store/bolt"
)

const (
	testHost   = "dps.test.example"
	ownerName  = DefaultPolicyName
	readerName = "enrollmentread"
)

// testEnv is a running API over HTTPS with a real bbolt store.
type testEnv struct {
	t         testing.TB
	srv       *httptest.Server
	st        *bolt.Store
	ownerKey  []byte
	readerKey []byte
	logs      *testkit.LogBuffer
}

func newTestEnv(t *testing.T) *testEnv { return newBenchEnv(t) }

// newBenchEnv is newTestEnv for tests and benchmarks.
func newBenchEnv(t testing.TB) *testEnv {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "dps.db"), bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	env := &testEnv{t: t, st: st, ownerKey: randomBytes(t, 32), readerKey: randomBytes(t, 32), logs: &testkit.LogBuffer{}}
	h, err := New(Config{
		Store:    st,
		HostName: testHost,
		Policies: []Policy{
			{Name: ownerName, Key: env.ownerKey, Rights: RightAll},
			{Name: readerName, Key: env.readerKey, Rights: RightRead},
		},
		Logger: slog.New(slog.NewJSONHandler(env.logs, nil)),
	})
	if err != nil {
		t.Fatalf("api.New: %v", err)
	}
	env.srv = httptest.NewTLSServer(h)
	t.Cleanup(env.srv.Close)
	return env
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// ownerToken signs a valid owner token.
func (e *testEnv) ownerToken() string {
	return attest.SignSAS(e.ownerKey, testHost, time.Now().Add(time.Hour), ownerName)
}

// result is a response, read.
type result struct {
	status int
	header http.Header
	body   []byte
}

// errorBody decodes a DPS error body.
func (r result) errorBody(t *testing.T) wire.Error {
	t.Helper()
	var e wire.Error
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("error body %q: %v", r.body, err)
	}
	return e
}

// expectError checks the status and DPS error shape.
func (r result) expectError(t *testing.T, status, code int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	e := r.errorBody(t)
	if code != 0 && e.ErrorCode != code {
		t.Fatalf("errorCode %d, want %d; body %s", e.ErrorCode, code, r.body)
	}
	if e.ErrorCode/1000 != status || e.TrackingID == "" || e.Message == "" || e.TimestampUTC == "" {
		t.Fatalf("error body not in DPS shape: %s", r.body)
	}
}

// request sends method path (api-version appended unless the path has a query)
// with the owner token unless hdr sets Authorization ("-" removes it).
func (e *testEnv) request(method, path string, body any, hdr map[string]string) result {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	url := e.srv.URL + path
	if !strings.Contains(path, "?") {
		url += "?api-version=2021-10-01"
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", e.ownerToken())
	for k, v := range hdr {
		if k == "Authorization" && v == "-" {
			req.Header.Del(k)
			continue
		}
		req.Header.Set(k, v)
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return result{status: res.StatusCode, header: res.Header, body: b}
}

// decodeAs unmarshals a successful response.
func decodeAs[T any](t *testing.T, r result) T {
	t.Helper()
	var v T
	if r.status/100 != 2 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
	return v
}

// testEK returns base64 of a TPM2B_PUBLIC RSA-2048 EK (TCG template, random modulus).
func testEK(t testing.TB) string {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub := tpm2.RSAEKTemplate
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()})
	return base64.StdEncoding.EncodeToString(tpm2.Marshal(tpm2.New2B(pub)))
}

// testCert returns a self-signed certificate in PEM and its DER.
func testCert(t testing.TB, cn string) (string, []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0x1234abcd),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), der
}

// symEnrollment is a minimal symmetric key enrollment body (keys generated by the service).
func symEnrollment(id string) map[string]any {
	return map[string]any{"registrationId": id, "attestation": map[string]any{"type": "symmetricKey"}}
}
