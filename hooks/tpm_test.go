package hooks_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device/devtpm"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/internal/swtpmtest"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
	"github.com/tpmdps/dpsd/internal/testkit/tpmsim"
	"github.com/tpmdps/dpsd/store"
)

// tpmKeys creates an EK and SRK on the simulator (flushed at cleanup).
func tpmKeys(t *testing.T, tpm transport.TPM, alg devtpm.Alg, srkT devtpm.SRKTemplate) (ek, srk *devtpm.Key) {
	t.Helper()
	ek, err := devtpm.CreateEK(tpm, alg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ek.Close() })
	srk, err = devtpm.CreateSRK(tpm, srkT)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srk.Close() })
	return ek, srk
}

func enrollTPM(t *testing.T, s *dpsdtest.Server, id string, ekPub []byte) {
	t.Helper()
	_, err := s.Store.PutEnrollment(context.Background(), &store.Enrollment{
		RegistrationID: id,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation:        store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: base64.StdEncoding.EncodeToString(ekPub)}},
			ProvisioningStatus: store.StatusEnabled,
		},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
}

func tpmBody(id string, ek, srk []byte) []byte {
	b, _ := json.Marshal(map[string]any{
		"registrationId": id,
		"tpm": map[string]string{
			"endorsementKey": base64.StdEncoding.EncodeToString(ek),
			"storageRootKey": base64.StdEncoding.EncodeToString(srk),
		},
	})
	return b
}

// dialer opens a raw connection over TCP or TLS.
type dialer func(t *testing.T) *mqtttest.Conn

func tcpDialer(s *dpsdtest.Server) dialer {
	return func(t *testing.T) *mqtttest.Conn { return mqtttest.Dial(t, s.TCPAddr) }
}

func tlsDialer(s *dpsdtest.Server) dialer {
	return func(t *testing.T) *mqtttest.Conn {
		return mqtttest.DialTLS(t, s.TLSAddr, s.TLSConfig())
	}
}

type challenge struct {
	AuthenticationKey string `json:"authenticationKey"`
	KeyName           string `json:"keyName"`
	Message           string `json:"message"`
	ErrorCode         int    `json:"errorCode"`
}

// askChallenge sends a register with tpm on a restricted client and returns
// the 401 body.
func askChallenge(t *testing.T, c *mqtttest.Conn, rid, id string, ek, srk []byte) (string, challenge) {
	t.Helper()
	c.Publish(registerTopic+rid, 0, tpmBody(id, ek, srk))
	topic, body := c.ReadResponse()
	var ch challenge
	if err := json.Unmarshal(body, &ch); err != nil {
		t.Fatalf("challenge body %q: %v", body, err)
	}
	return topic, ch
}

// restrictedConn connects without a password and subscribes.
func restrictedConn(t *testing.T, s *dpsdtest.Server, dial dialer, id string) *mqtttest.Conn {
	t.Helper()
	c := dial(t)
	if code, present := c.Connect(id, username(s, id), "", true, 0); code != 0 || present {
		t.Fatalf("restricted CONNACK %d %v", code, present)
	}
	c.Subscribe(1, hooks.ResponseFilter)
	return c
}

// getChallenge runs the restricted half: connect, ask, disconnect.
func getChallenge(t *testing.T, s *dpsdtest.Server, dial dialer, id string, ek, srk []byte) challenge {
	t.Helper()
	c := restrictedConn(t, s, dial, id)
	topic, ch := askChallenge(t, c, "1", id, ek, srk)
	if !strings.HasPrefix(topic, "$dps/registrations/res/401/?$rid=1") || ch.AuthenticationKey == "" || ch.KeyName == "" {
		t.Fatalf("want a 401 challenge, got %q %+v", topic, ch)
	}
	c.Disconnect()
	return ch
}

// finish reconnects with token and registers and polls to the end; it
// returns the final registrationState.tpm.authenticationKey.
func finish(t *testing.T, s *dpsdtest.Server, dial dialer, id, token string, ek, srk []byte) []byte {
	t.Helper()
	c := dial(t)
	if code, present := c.Connect(id, username(s, id), token, false, 0); code != 0 || present {
		t.Fatalf("TPM SAS CONNACK %d %v", code, present)
	}
	c.Subscribe(1, hooks.ResponseFilter)
	id1 := c.Publish(registerTopic+"2", 1, tpmBody(id, ek, srk))
	if p := c.Read(); p.Type() != packets.Puback || p.PacketID != id1 {
		t.Fatalf("want PUBACK first, got %v", p)
	}
	topic, body := c.ReadResponse()
	if !strings.Contains(topic, "/202/?$rid=2") {
		t.Fatalf("register: %q %s", topic, body)
	}
	op := decode(t, body)
	c.Publish(pollTopic+"3&operationId="+op.OperationID, 1, nil)
	c.Read() // PUBACK
	topic, body = c.ReadResponse()
	var final struct {
		Status            string `json:"status"`
		RegistrationState struct {
			AssignedHub string `json:"assignedHub"`
			TPM         *struct {
				AuthenticationKey string `json:"authenticationKey"`
			} `json:"tpm"`
		} `json:"registrationState"`
	}
	json.Unmarshal(body, &final)
	if !strings.Contains(topic, "/200/?$rid=3") || final.Status != "assigned" || final.RegistrationState.AssignedHub != dpsdtest.DefaultHub || final.RegistrationState.TPM == nil {
		t.Fatalf("poll: %q %s", topic, body)
	}
	blob, err := base64.StdEncoding.DecodeString(final.RegistrationState.TPM.AuthenticationKey)
	if err != nil {
		t.Fatal(err)
	}
	return blob
}

// activate opens a blob in the simulator and signs a SAS with it.
func activate(t *testing.T, s *dpsdtest.Server, ek, srk *devtpm.Key, id string, ch challenge, expiry time.Time) string {
	t.Helper()
	blob, err := base64.StdEncoding.DecodeString(ch.AuthenticationKey)
	if err != nil {
		t.Fatal(err)
	}
	k, err := devtpm.Activate(ek, srk, blob)
	if err != nil {
		t.Fatalf("activate: %v", err)
	}
	defer k.Close()
	tok, err := k.SASToken(attest.RegistrationResource(s.IDScope, id), ch.KeyName, expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestTPMFlowSimulator: the whole TPM flow over TCP and TLS with RSA and
// ECC keys on the reference simulator; the hub key blob activates too; the
// used challenge cannot authenticate again.
func TestTPMFlowSimulator(t *testing.T) {
	tpm := tpmsim.Open(t)
	s := dpsdtest.Start(t, dpsdtest.Options{})
	cases := []struct {
		name string
		dial dialer
		alg  devtpm.Alg
		srkT devtpm.SRKTemplate
	}{
		{"tcp-rsa", tcpDialer(s), devtpm.RSA2048, devtpm.SRKRSAZeroUnique},
		{"tls-rsa-empty-unique", tlsDialer(s), devtpm.RSA2048, devtpm.SRKRSAEmptyUnique},
		{"tls-ecc", tlsDialer(s), devtpm.ECCP256, devtpm.SRKECCP256},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ek, srk := tpmKeys(t, tpm, tc.alg, tc.srkT)
			id := "tpm-" + tc.name
			enrollTPM(t, s, id, ek.Public())
			ch := getChallenge(t, s, tc.dial, id, ek.Public(), srk.Public())
			tok := activate(t, s, ek, srk, id, ch, time.Now().Add(time.Hour))
			hubBlob := finish(t, s, tc.dial, id, tok, ek.Public(), srk.Public())
			hk, err := devtpm.Activate(ek, srk, hubBlob)
			if err != nil {
				t.Fatalf("hub key blob does not activate: %v", err)
			}
			hk.Close()
			// The challenge has been used: the same token is refused now.
			c := tc.dial(t)
			if code, _ := c.Connect(id, username(s, id), tok, true, 0); code != 5 {
				t.Fatalf("replayed challenge token: CONNACK %d, want 5", code)
			}
		})
	}
}

// TestTPMHostile: wrong EK and unknown id get the same 401; expired tokens
// and tokens for another id are refused; 200 challenge requests for one id
// from several connections neither block the real device nor cancel the
// challenge it took before them.
func TestTPMHostile(t *testing.T) {
	tpm := tpmsim.Open(t)
	s := dpsdtest.Start(t, dpsdtest.Options{HookLimits: hooks.Limits{
		ChallengesPerConnection:        60,
		ChallengesPerAddressPerMinute:  1000,
		ChallengeBurstPerAddress:       1000,
		RequestsPerConnectionPerMinute: -1,
	}})
	ek, srk := tpmKeys(t, tpm, devtpm.RSA2048, devtpm.SRKRSAZeroUnique)
	otherEK, err := devtpm.CreateEK(tpm, devtpm.ECCP256)
	if err != nil {
		t.Fatal(err)
	}
	otherEKPub := otherEK.Public()
	otherEK.Close() // the simulator has 3 object slots

	id := "tpm-hostile"
	enrollTPM(t, s, id, ek.Public())
	dial := tcpDialer(s)

	c := restrictedConn(t, s, dial, "tpm-unknown")
	topic1, unknown := askChallenge(t, c, "u", "tpm-unknown", ek.Public(), srk.Public())
	c2 := restrictedConn(t, s, dial, id)
	topic2, wrong := askChallenge(t, c2, "u", id, otherEKPub, srk.Public())
	if topic1 != topic2 || !strings.HasPrefix(topic1, "$dps/registrations/res/401/") || unknown.ErrorCode != 401002 ||
		wrong.ErrorCode != 401002 || unknown.AuthenticationKey != "" || wrong.AuthenticationKey != "" || unknown.Message != wrong.Message {
		t.Fatalf("unknown id %q %+v vs wrong EK %q %+v", topic1, unknown, topic2, wrong)
	}

	// The real device takes a challenge first.
	early := getChallenge(t, s, dial, id, ek.Public(), srk.Public())

	// An attacker who knows the EK floods challenges for the id.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := 0; w < 4; w++ {
		ac := restrictedConn(t, s, dial, id) // restricted sessions with one id coexist
		wg.Add(1)
		go func(ac *mqtttest.Conn, w int) {
			defer wg.Done()
			body := tpmBody(id, ek.Public(), srk.Public())
			for i := 0; i < 50; i++ {
				if err := ac.SendErr(mqtttest.PublishPacket(registerTopic+fmt.Sprint(i), 0, 0, body)); err != nil {
					errs <- err
					return
				}
			}
			for i := 0; i < 50; i++ {
				p, err := ac.ReadPacket(20 * time.Second)
				if err != nil {
					errs <- fmt.Errorf("attacker %d answer %d: %w", w, i, err)
					return
				}
				if topic := p.TopicName; p.Type() != packets.Publish || !strings.Contains(topic, "/res/401/?$rid="+fmt.Sprint(i)) {
					errs <- fmt.Errorf("attacker %d answer %d: %q", w, i, topic)
					return
				}
			}
		}(ac, w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Expired tokens and tokens for another id are refused.
	for name, tok := range map[string]string{
		"expired":    activate(t, s, ek, srk, id, early, time.Now().Add(-time.Hour)),
		"another id": activateFor(t, s, ek, srk, "tpm-unknown", early),
	} {
		c := dial(t)
		if code, _ := c.Connect(id, username(s, id), tok, true, 0); code != 5 {
			t.Fatalf("%s: CONNACK %d, want 5", name, code)
		}
	}
	// The early challenge still authenticates, and the device provisions.
	tok := activate(t, s, ek, srk, id, early, time.Now().Add(time.Hour))
	finish(t, s, dial, id, tok, ek.Public(), srk.Public())
}

// activateFor signs a token for another registration id with the challenge key.
func activateFor(t *testing.T, s *dpsdtest.Server, ek, srk *devtpm.Key, otherID string, ch challenge) string {
	t.Helper()
	blob, _ := base64.StdEncoding.DecodeString(ch.AuthenticationKey)
	k, err := devtpm.Activate(ek, srk, blob)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	tok, err := k.SASToken(attest.RegistrationResource(s.IDScope, otherID), ch.KeyName, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestTPMFlowSWTPM: the same flow with swtpm and tpm2-tools as the device.
func TestTPMFlowSWTPM(t *testing.T) {
	sw := swtpmtest.Start(t)
	ekPub := sw.CreateEK(t, swtpmtest.EKRSA)
	srkPub := sw.CreateSRK(t, swtpmtest.SRKRSAEmptyUnique)
	s := dpsdtest.Start(t, dpsdtest.Options{})
	id := "swtpm-device"
	enrollTPM(t, s, id, ekPub)
	dial := tlsDialer(s)
	ch := getChallenge(t, s, dial, id, ekPub, srkPub)
	blob, err := base64.StdEncoding.DecodeString(ch.AuthenticationKey)
	if err != nil {
		t.Fatal(err)
	}
	k := sw.ActivateBlob(t, blob)
	tok, err := devtpm.SASToken(func(data []byte) ([]byte, error) { return k.HMAC(t, data), nil },
		attest.RegistrationResource(s.IDScope, id), ch.KeyName, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	hubBlob := finish(t, s, dial, id, tok, ekPub, srkPub)
	if _, err := sw.ActivateBlobErr(t, hubBlob); err != nil {
		t.Fatalf("hub key blob does not activate in swtpm: %v", err)
	}
}
