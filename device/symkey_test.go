package device

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"testing"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/dpsdtest"
	"github.com/tpmdps/dpsd/store"
)

func TestSymmetricKeyConstructors(t *testing.T) {
	groupKey := bytes.Repeat([]byte{7}, 32)
	k, err := NewGroupSymmetricKey(groupKey, "Sensor-1")
	if err != nil {
		t.Fatal(err)
	}
	// Derived over the id as given, not lowercased.
	if !bytes.Equal(k.Key, attest.DeriveDeviceKey(groupKey, "Sensor-1")) || bytes.Equal(k.Key, attest.DeriveDeviceKey(groupKey, "sensor-1")) {
		t.Fatal("device key is not HMAC(groupKey, registrationId as given)")
	}
	if _, err := NewGroupSymmetricKey(groupKey[:8], "s"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("short group key: %v", err)
	}
	if _, err := NewGroupSymmetricKey(groupKey, "-bad-"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("bad registration id: %v", err)
	}
	if _, err := NewSymmetricKey(make([]byte, 65)); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("long key: %v", err)
	}
	key := bytes.Repeat([]byte{1}, 16)
	sk, err := NewSymmetricKey(key)
	if err != nil {
		t.Fatal(err)
	}
	key[0] = 9
	if sk.Key[0] != 1 {
		t.Fatal("NewSymmetricKey keeps the caller's slice")
	}
}

// TestE2ESymmetricKeyKinds provisions with an individual enrollment's
// primary and secondary keys and with a group-derived key.
func TestE2ESymmetricKeyKinds(t *testing.T) {
	srv := startServer(t, false)
	primary, secondary := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	groupKey := bytes.Repeat([]byte{3}, 48)
	ctx := context.Background()
	b64 := base64.StdEncoding.EncodeToString
	if _, err := srv.Store.PutEnrollment(ctx, &store.Enrollment{RegistrationID: "sym-ind",
		EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
			PrimaryKey: b64(primary), SecondaryKey: b64(secondary)}},
			ProvisioningStatus: store.StatusEnabled}}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Store.PutGroup(ctx, &store.Group{EnrollmentGroupID: "sym-fleet",
		EnrollmentSettings: store.EnrollmentSettings{Attestation: store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
			PrimaryKey: b64(groupKey), SecondaryKey: b64(bytes.Repeat([]byte{4}, 32))}},
			ProvisioningStatus: store.StatusEnabled}}, ""); err != nil {
		t.Fatal(err)
	}
	derived, err := NewGroupSymmetricKey(groupKey, "Sym-Member-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, regID, group string
		att                Attestation
	}{
		{"primary", "sym-ind", "", &SymmetricKey{Key: primary}},
		{"secondary", "sym-ind", "", &SymmetricKey{Key: secondary}},
		{"group", "Sym-Member-1", "sym-fleet", derived},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := serverConfig(t, srv, TransportTLS, c.att)
			cfg.RegistrationID = c.regID
			res, err := Provision(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != StatusAssigned || res.AssignedHub != dpsdtest.DefaultHub {
				t.Fatalf("result %+v", res)
			}
			got := ""
			if res.State.SymmetricKey != nil {
				got = res.State.SymmetricKey.EnrollmentGroupID
			}
			if got != c.group {
				t.Fatalf("symmetricKey.enrollmentGroupId = %q, want %q", got, c.group)
			}
		})
	}
	// The group key itself never signs.
	cfg := serverConfig(t, srv, TransportTLS, &SymmetricKey{Key: groupKey})
	cfg.RegistrationID = "Sym-Member-2"
	if _, err := Provision(ctx, cfg); !errors.Is(err, ErrConnectRefused) {
		t.Fatalf("group key as device key: %v", err)
	}
}
