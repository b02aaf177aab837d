package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
	"github.com/tpmdps/dpsd/store"
)

// secrets collects every secret a run produced, under a label for failures.
type secrets struct {
	mu  sync.Mutex
	all map[string]string // text that must not appear -> label
}

// addBytes records the usual text encodings of a binary secret.
func (s *secrets) addBytes(label string, b []byte) {
	if len(b) < 8 {
		return
	}
	s.addText(label+" (base64)", base64.StdEncoding.EncodeToString(b))
	s.addText(label+" (base64url)", base64.RawURLEncoding.EncodeToString(b))
	s.addText(label+" (hex)", hex.EncodeToString(b))
	s.addText(label+" (HEX)", strings.ToUpper(hex.EncodeToString(b)))
	s.addText(label+" (raw)", string(b))
}

// addText records a textual secret, and its URL-encoded form.
func (s *secrets) addText(label, v string) {
	if len(v) < 8 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.all == nil {
		s.all = make(map[string]string)
	}
	if _, seen := s.all[v]; !seen {
		s.all[v] = label
	}
	if esc := url.QueryEscape(v); esc != v {
		if _, seen := s.all[esc]; !seen {
			s.all[esc] = label + " (url-encoded)"
		}
	}
}

// addToken records a SAS token and its signature in every form.
func (s *secrets) addToken(label, tok string) {
	s.addText(label, tok)
	for _, f := range strings.Split(strings.TrimPrefix(tok, "SharedAccessSignature "), "&") {
		if sig, ok := strings.CutPrefix(f, "sig="); ok {
			s.addText(label+" signature", sig)
			if dec, err := url.QueryUnescape(sig); err == nil {
				s.addText(label+" signature (decoded)", dec)
				if raw, err := base64.StdEncoding.DecodeString(dec); err == nil {
					s.addBytes(label+" signature bytes", raw)
				}
			}
		}
	}
}

// recordingSym is symmetric key attestation that records its tokens.
type recordingSym struct {
	*device.SymmetricKey
	sec *secrets
}

func (r *recordingSym) Credentials(ctx context.Context, s device.Session) (device.Credentials, error) {
	c, err := r.SymmetricKey.Credentials(ctx, s)
	r.sec.addToken("device SAS token", c.Password)
	return c, err
}

// recordingTPM is TPM attestation that records the challenge blob and the
// token signed with the challenge key.
type recordingTPM struct {
	*device.TPM
	sec *secrets
}

func (r *recordingTPM) Challenge(ctx context.Context, s device.Session, c device.Challenge) (device.Credentials, error) {
	r.sec.addBytes("activation blob", c.AuthenticationKey)
	cr, err := r.TPM.Challenge(ctx, s, c)
	r.sec.addToken("TPM challenge SAS token", cr.Password)
	return cr, err
}

// recordingTransport records the service SAS tokens of API requests.
type recordingTransport struct {
	rt  http.RoundTripper
	sec *secrets
}

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r.sec.addToken("service SAS token", req.Header.Get("Authorization"))
	return r.rt.RoundTrip(req)
}

// TestLogsHoldNoSecrets runs a full provisioning set against `dpsd serve` at
// debug level (API enrollments with keys, a symmetric key device, a group
// device, a TPM device) with the devices logging at debug level too, and
// scans every log line for keys, tokens, signatures and blobs. It also
// checks that the data directory is 0700 and its files 0600.
func TestLogsHoldNoSecrets(t *testing.T) {
	sec := &secrets{}
	p := newDpsd(t, buildDpsd(t))
	p.start()
	ctx := ctxTimeout(t, 2*time.Minute)
	scope := p.idScope()
	api := p.apiClient(func(rt http.RoundTripper) http.RoundTripper { return &recordingTransport{rt: rt, sec: sec} })

	d, err := datadir.Open(p.dir)
	if err != nil {
		t.Fatal(err)
	}
	sec.addBytes("challenge secret", d.Secrets.ChallengeSecret)
	sec.addBytes("service policy key", d.Secrets.ServicePolicyKey)
	for _, f := range strings.Split(p.connectionString(), ";") {
		if k, ok := strings.CutPrefix(f, "SharedAccessKey="); ok {
			sec.addText("connection string key", k)
		}
	}
	for _, f := range []string{datadir.CAKeyFile, datadir.ServerKeyFile, datadir.IssuingCAKeyFile} {
		pem, err := os.ReadFile(filepath.Join(p.dir, f))
		if err != nil {
			t.Fatal(err)
		}
		body := strings.Join(strings.Split(string(pem), "\n")[1:3], "\n") // a slice of the key material
		sec.addText(f, strings.Split(body, "\n")[0])
	}
	issuingKey := issuingKeySecrets(t, p.dir)
	for label, v := range issuingKey {
		sec.addBytes(label, v)
	}

	symKey, symKey2 := randomKey(t, 32), randomKey(t, 32)
	groupKey, groupKey2 := randomKey(t, 64), randomKey(t, 64)
	for l, k := range map[string][]byte{"enrollment primary key": symKey, "enrollment secondary key": symKey2,
		"group primary key": groupKey, "group secondary key": groupKey2} {
		sec.addBytes(l, k)
	}
	_, err = api.PutEnrollment(ctx, &store.Enrollment{
		RegistrationID: "logscan-sym",
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
				PrimaryKey: base64.StdEncoding.EncodeToString(symKey), SecondaryKey: base64.StdEncoding.EncodeToString(symKey2)}},
			ProvisioningStatus:   store.StatusEnabled,
			CredentialPolicyName: "logscan",
		},
	}, "")
	if err != nil {
		t.Fatalf("PutEnrollment: %v", err)
	}
	_, err = api.PutGroup(ctx, &store.Group{
		EnrollmentGroupID: "logscan-group",
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
				PrimaryKey: base64.StdEncoding.EncodeToString(groupKey), SecondaryKey: base64.StdEncoding.EncodeToString(groupKey2)}},
			ProvisioningStatus: store.StatusEnabled,
		},
	}, "")
	if err != nil {
		t.Fatalf("PutGroup: %v", err)
	}
	att := &device.TPM{Device: tpmsim.Open(t)}
	ek, err := att.EndorsementKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tpmID := attest.RegistrationID(ek)
	_, err = api.PutEnrollment(ctx, &store.Enrollment{
		RegistrationID: tpmID,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationTPM,
				TPM: &store.TPMAttestation{EndorsementKey: base64.StdEncoding.EncodeToString(ek)}},
			ProvisioningStatus: store.StatusEnabled,
		},
	}, "")
	if err != nil {
		t.Fatalf("PutEnrollment TPM: %v", err)
	}
	if _, err := api.GetEnrollment(ctx, "logscan-sym"); err != nil {
		t.Fatal(err)
	}
	if _, err := api.GetEnrollmentAttestation(ctx, "logscan-sym"); err != nil { // the API returns keys: still not logged
		t.Fatal(err)
	}

	devLog := slog.New(slog.NewTextHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	memberKey := attest.DeriveDeviceKey(groupKey, "logscan-member")
	sec.addBytes("group member device key", memberKey)
	runs := []struct {
		id  string
		att device.Attestation
	}{
		{"logscan-sym", &recordingSym{SymmetricKey: &device.SymmetricKey{Key: symKey}, sec: sec}},
		{"logscan-member", &recordingSym{SymmetricKey: &device.SymmetricKey{Key: memberKey}, sec: sec}},
		{tpmID, &recordingTPM{TPM: att, sec: sec}},
	}
	certKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certKeyDER, err := x509.MarshalPKCS8PrivateKey(certKey)
	if err != nil {
		t.Fatal(err)
	}
	sec.addBytes("device certificate key", certKeyDER)
	sec.addBytes("device certificate key scalar", certKey.D.Bytes())
	for _, r := range runs {
		cfg := p.deviceConfig(scope, r.id, r.att)
		cfg.Logger = devLog.With("device", r.id)
		if r.id == "logscan-sym" {
			cfg.CertificateKey = certKey // a certificate issued: the issuing key signs
		}
		res := provisionOK(t, ctx, cfg)
		if r.id == "logscan-sym" && len(res.CertificateChain) == 0 {
			t.Fatal("no certificate issued: the scan of the issuing key would prove little")
		}
		if r.id == tpmID {
			var rs struct {
				TPM struct {
					AuthenticationKey string `json:"authenticationKey"`
				} `json:"tpm"`
			}
			if err := json.Unmarshal(res.RegistrationState, &rs); err != nil || rs.TPM.AuthenticationKey == "" {
				t.Fatalf("TPM registrationState without the hub key blob: %s", res.RegistrationState)
			}
			sec.addText("hub key blob", rs.TPM.AuthenticationKey)
		}
	}
	if _, err := api.GetRegistration(ctx, tpmID); err != nil {
		t.Fatal(err)
	}
	// A backup is the store alone: the issuing CA's key is in none of it
	// (it lives in its own file, like the data key).
	var backup bytes.Buffer
	if _, err := api.Backup(ctx, &backup); err != nil {
		t.Fatalf("backup: %v", err)
	}
	if !bytes.Contains(backup.Bytes(), []byte("dpsdIssuedCertificate")) {
		t.Fatal("the backup holds no issued certificate record: the scan would prove little")
	}
	for label, v := range issuingKey {
		for _, enc := range [][]byte{v, []byte(base64.StdEncoding.EncodeToString(v)), []byte(hex.EncodeToString(v))} {
			if bytes.Contains(backup.Bytes(), enc) {
				t.Errorf("the backup contains the %s", label)
			}
		}
	}
	p.stop()

	st := checkStore(t, p.dir)
	reg, err := st.GetRegistration(context.Background(), tpmID)
	if err != nil || len(reg.HubKey) == 0 {
		t.Fatalf("TPM registration hub key: %v", err)
	}
	sec.addBytes("hub key", reg.HubKey)
	st.Close()

	logs := p.logs.String()
	if !strings.Contains(logs, "level=DEBUG") || !strings.Contains(logs, "answered") {
		t.Fatalf("the run logged no debug lines or answers: the scan would prove nothing\n%s", tail(logs, 2000))
	}
	labels := make(map[string]bool)
	for _, l := range sec.all {
		labels[l] = true
	}
	if !strings.Contains(logs, "certificateSerial=") {
		t.Fatal("no certificate issuance logged: the scan of the issuing key would prove little")
	}
	for _, want := range []string{"device SAS token", "TPM challenge SAS token signature (decoded)", "activation blob (base64)",
		"service SAS token signature", "hub key blob", "hub key (base64)", "challenge secret (hex)", "service policy key (base64)",
		"issuing CA key (PKCS #8) (base64)", "issuing CA key scalar (hex)", "device certificate key (base64)"} {
		if !labels[want] {
			t.Errorf("the run produced no %s to look for", want)
		}
	}
	leaks := 0
	for v, label := range sec.all {
		if i := strings.Index(logs, v); i >= 0 {
			leaks++
			line := logs[strings.LastIndex(logs[:i], "\n")+1:]
			if j := strings.IndexByte(line, '\n'); j >= 0 {
				line = line[:j]
			}
			t.Errorf("the logs contain the %s: %s", label, line)
		}
	}
	t.Logf("scanned %d bytes of logs for %d secret encodings; %d leaks", len(logs), len(sec.all), leaks)

	checkModes(t, p.dir)
}

// checkModes asserts the data directory is 0700 and every file in it 0600.
func checkModes(t *testing.T, dir string) {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode %v, want 0700", fi.Mode().Perm())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names bytes.Buffer
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		names.WriteString(e.Name() + " ")
		if info.Mode().IsRegular() && info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.Name(), info.Mode().Perm())
		}
	}
	for _, must := range []string{datadir.DBFile, datadir.DBFile + ".key", datadir.SecretsFile, datadir.ConnectionStringFile, datadir.CAKeyFile, datadir.ServerKeyFile,
		datadir.IssuingCAKeyFile, datadir.IssuingCACertFile} {
		if _, err := os.Stat(filepath.Join(dir, must)); err != nil {
			t.Errorf("data directory lacks %s (has %s)", must, names.String())
		}
	}
}

// issuingKeySecrets reads the issuing CA's key that dpsd generated in dir:
// its PKCS #8 DER and its private scalar.
func issuingKeySecrets(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, datadir.IssuingCAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s is not PEM", datadir.IssuingCAKeyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("issuing key %T, want the default ECDSA", k)
	}
	return map[string][]byte{"issuing CA key (PKCS #8)": b.Bytes, "issuing CA key scalar": ec.D.Bytes()}
}
