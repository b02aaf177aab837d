package device

import (
	"context"
	"encoding/base64"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/broker"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/hooks"
	"github.com/tpmdps/dpsd/store"
)

// startServer runs the real service with fast polling and challenge limits
// wide enough for many devices on one loopback address.
func startServer(t *testing.T, ws bool) *dpsdtest.Server { return startServerWS(t, ws) }

// startServerTB starts a server without WebSocket for benchmarks.
func startServerTB(t testing.TB) *dpsdtest.Server { return startServerWS(t, false) }

func startServerWS(t testing.TB, ws bool) *dpsdtest.Server {
	t.Helper()
	return dpsdtest.Start(t, dpsdtest.Options{
		RetryAfter: -1, // "ask again now"
		WebSocket:  ws,
		Limits: broker.Limits{
			ConnectionsPerAddress:          5000,
			ConnectionsPerAddressPerMinute: 100000,
			ConnectionBurstPerAddress:      5000,
		}, HookLimits: hooks.Limits{
			RestrictedSessions:              1000,
			RestrictedSessionsPerAddress:    -1, // every device connects from 127.0.0.1
			AuthFailuresPerAddressPerMinute: -1,
			ChallengesPerAddressPerMinute:   100000,
			ChallengeBurstPerAddress:        1000,
			ChallengesPerMinute:             100000,
			ChallengeBurst:                  1000,
		},
	})
}

// enrollTPM adds an individual TPM enrollment for the EK; regID "" uses the
// EK's default registration id, which is returned.
func enrollTPM(t *testing.T, srv *dpsdtest.Server, regID string, ek []byte) string {
	return enrollTPMTB(t, srv, regID, ek)
}

func enrollTPMTB(t testing.TB, srv *dpsdtest.Server, regID string, ek []byte) string {
	t.Helper()
	if regID == "" {
		regID = attest.RegistrationID(ek)
	}
	_, err := srv.Store.PutEnrollment(context.Background(), &store.Enrollment{
		RegistrationID: regID,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationTPM,
				TPM: &store.TPMAttestation{EndorsementKey: base64.StdEncoding.EncodeToString(ek)}},
			IoTHubHostName:     dpsdtest.DefaultHub,
			ProvisioningStatus: store.StatusEnabled,
		},
	}, "")
	if err != nil {
		t.Fatalf("PutEnrollment: %v", err)
	}
	return regID
}

// endorsementKey returns the TPM's EK public (creating it if needed).
func endorsementKey(t *testing.T, att *TPM) []byte {
	t.Helper()
	ek, err := att.EndorsementKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ek
}

// serverConfig is a Config for srv over tr (TLS trusts the test CA).
func serverConfig(t *testing.T, srv *dpsdtest.Server, tr Transport, att Attestation) Config {
	return serverConfigTB(t, srv, tr, att)
}

func serverConfigTB(t testing.TB, srv *dpsdtest.Server, tr Transport, att Attestation) Config {
	t.Helper()
	addr := srv.TCPAddr
	switch tr {
	case TransportTLS:
		addr = srv.TLSAddr
	case TransportWebSocket:
		addr = srv.WSAddr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return Config{
		Host: host, Port: p, Transport: tr, RootCAs: srv.RootCAs,
		IDScope: srv.IDScope, Attestation: att, Timeout: 60 * time.Second,
	}
}

// checkHubSAS signs a hub token with the key in the TPM and verifies it with
// the hub key the service recorded: the TPM holds the service's key.
func checkHubSAS(t *testing.T, srv *dpsdtest.Server, tpm transport.TPM, handle tpm2.TPMHandle, res *Result) {
	t.Helper()
	reg, err := srv.Store.GetRegistration(context.Background(), res.RegistrationID)
	if err != nil {
		t.Fatalf("GetRegistration: %v", err)
	}
	if len(reg.HubKey) != 32 {
		t.Fatalf("service recorded a hub key of %d bytes", len(reg.HubKey))
	}
	now := time.Now()
	resource := HubResource(res.AssignedHub, res.DeviceID)
	tok, err := SignHubSAS(tpm, handle, resource, now.Add(time.Hour))
	if err != nil {
		t.Fatalf("SignHubSAS: %v", err)
	}
	parsed, err := attest.ParseSASToken(tok)
	if err != nil {
		t.Fatalf("hub token does not parse: %v", err)
	}
	if err := parsed.Verify(reg.HubKey, resource, now, attest.SASPolicy{}); err != nil {
		t.Fatalf("hub token does not verify with the service's hub key: %v", err)
	}
	if parsed.KeyName != "" {
		t.Fatalf("hub token has skn %q", parsed.KeyName)
	}
	wrong := append([]byte(nil), reg.HubKey...)
	wrong[0] ^= 1
	if parsed.Verify(wrong, resource, now, attest.SASPolicy{}) == nil {
		t.Fatalf("hub token verifies with a different key")
	}
}

// transientObjects counts the transient objects loaded in the TPM.
func transientObjects(t *testing.T, tpm transport.TPM) int {
	t.Helper()
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapHandles,
		Property:      uint32(tpm2.TPMHTTransient) << 24,
		PropertyCount: 32,
	}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	h, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	return len(h.Handle)
}

// storeSymEnrollment is an individual symmetric-key enrollment.
func storeSymEnrollment(regID string, key []byte) *store.Enrollment {
	return &store.Enrollment{
		RegistrationID: regID,
		EnrollmentSettings: store.EnrollmentSettings{
			Attestation: store.Attestation{Type: store.AttestationSymmetricKey,
				SymmetricKey: &store.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(key)}},
			IoTHubHostName:     dpsdtest.DefaultHub,
			ProvisioningStatus: store.StatusEnabled,
		},
	}
}
