package device

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device/devtpm"
)

// Persistent handles of the keys a TPM device ends up with. The EK, SRK and
// identity key handles are the Azure device SDKs' (devtpm); the hub key
// handle is ours: the next one after the identity key, in the owner range.
const (
	// DefaultHubKeyHandle is where TPM.Finish persists the hub key from
	// the final registrationState.tpm.authenticationKey.
	DefaultHubKeyHandle tpm2.TPMHandle = 0x81000101
)

// DefaultChallengeSASLifetime is the lifetime of the SAS token a TPM device
// signs with its challenge key; the broker's challenge reference carries its
// own (shorter) expiry too.
const DefaultChallengeSASLifetime = time.Hour

// TPM is TPM 2.0 attestation (docs/protocol.md section 5) on a go-tpm transport
// (see device/tpmtransport to open one). It reads the EK at
// devtpm.EKHandle and the SRK at devtpm.SRKHandle, creating and persisting
// them when absent; sends both in the register body, with the EK
// certificate the manufacturer stored in NV when there is one (TPM
// enrollment groups admit TPMs by it); opens the challenge
// blob in the TPM and signs the reconnect SAS token there (TPM2_HMAC); and
// imports the final blob's hub key, persisting it at HubKeyHandle, so that
// the hub key never exists outside the TPM. Use SignHubSAS afterwards.
//
// Its operations are serialized by an internal lock, so one TPM value may be
// shared; a physical TPM still belongs to one device identity (one EK).
type TPM struct {
	// Device is the open TPM. TPM does not close it.
	Device transport.TPM
	// KeyAlg is the EK algorithm used when no EK is persisted yet
	// (devtpm.RSA2048, the default, or devtpm.ECCP256); a persisted EK is
	// used whatever its algorithm. An SRK that must be created follows the
	// EK: SRKRSAEmptyUnique for RSA, SRKECCP256 for ECC.
	KeyAlg devtpm.Alg
	// SRKTemplate overrides the SRK template when no SRK is persisted yet.
	SRKTemplate *devtpm.SRKTemplate
	// IdentityKeyHandle, when not zero, is where the challenge's identity
	// key is persisted (devtpm.IdentityKeyHandle is the Azure SDKs' choice);
	// when zero the key is flushed after signing.
	IdentityKeyHandle tpm2.TPMHandle
	// HubKeyHandle is where the hub key is persisted (default DefaultHubKeyHandle).
	HubKeyHandle tpm2.TPMHandle
	// NoPersistHubKey leaves the hub key unpersisted: Result.HubKey then
	// carries only its wrapped Public and Private, to reload with
	// devtpm.LoadIdentityKey under the SRK.
	NoPersistHubKey bool
	// SASLifetime is the challenge SAS token's lifetime (default DefaultChallengeSASLifetime).
	SASLifetime time.Duration
	// EKCertificate, when set, is the EK certificate (DER) sent instead of
	// the one in the TPM's NV: for TPMs whose manufacturer keeps it
	// elsewhere (firmware TPMs often publish theirs online).
	EKCertificate []byte
	// NoEKCertificate sends no EK certificate at all.
	NoEKCertificate bool

	mu sync.Mutex // serializes TPM command sequences
	// ekCert is the EK certificate read from NV (nil: none), once ekCertRead.
	ekCert     []byte
	ekCertRead bool
}

// tpmErr marks err as a TPM failure.
func tpmErr(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrTPM, what, err)
}

// keys returns the EK and SRK. A key already persisted at its handle is
// used whatever its algorithm; a missing one is created (EK per KeyAlg, SRK
// per SRKTemplate or following the EK's algorithm) and persisted. Called with
// t.mu held.
func (t *TPM) keys() (ek, srk *devtpm.Key, err error) {
	if t.Device == nil {
		return nil, nil, fmt.Errorf("%w: TPM.Device is nil", ErrInvalidConfig)
	}
	ek, err = devtpm.ReadPersistent(t.Device, devtpm.EKHandle)
	if errors.Is(err, tpm2.TPMRCHandle) {
		ek, err = devtpm.ReadOrCreateEK(t.Device, t.KeyAlg)
	}
	if err != nil {
		return nil, nil, tpmErr("endorsement key", err)
	}
	srk, err = devtpm.ReadPersistent(t.Device, devtpm.SRKHandle)
	if errors.Is(err, tpm2.TPMRCHandle) {
		tmpl := devtpm.SRKRSAEmptyUnique
		if pub, perr := tpm2.Unmarshal[tpm2.TPM2BPublic](ek.Public()); perr == nil {
			if c, cerr := pub.Contents(); cerr == nil && c.Type == tpm2.TPMAlgECC {
				tmpl = devtpm.SRKECCP256
			}
		}
		if t.SRKTemplate != nil {
			tmpl = *t.SRKTemplate
		}
		srk, err = devtpm.ReadOrCreateSRK(t.Device, tmpl)
	}
	if err != nil {
		return nil, nil, tpmErr("storage root key", err)
	}
	return ek, srk, nil
}

// EndorsementKey returns the EK's TPM2B_PUBLIC (creating and persisting the
// EK if needed): what an operator enrolls.
func (t *TPM) EndorsementKey(ctx context.Context) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	ek, _, err := t.keys()
	if err != nil {
		return nil, err
	}
	return ek.Public(), nil
}

// EndorsementKeyCertificate returns the EK certificate the device sends:
// TPM.EKCertificate if set, else the one the manufacturer stored in the
// TPM's NV for the EK's algorithm (devtpm.ReadEKCertificate; read once),
// without an NV header or padding. It returns nil and no error when there
// is none, or when NoEKCertificate is set.
func (t *TPM) EndorsementKeyCertificate(ctx context.Context) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ekCertificate()
}

// ekCertificate is EndorsementKeyCertificate with t.mu held.
func (t *TPM) ekCertificate() ([]byte, error) {
	switch {
	case t.NoEKCertificate:
		return nil, nil
	case t.EKCertificate != nil:
		return t.EKCertificate, nil
	case t.ekCertRead:
		return t.ekCert, nil
	}
	ek, _, err := t.keys()
	if err != nil {
		return nil, err
	}
	alg, err := devtpm.AlgOf(ek.Public())
	if err != nil {
		return nil, tpmErr("endorsement key", err)
	}
	raw, err := devtpm.ReadEKCertificate(t.Device, alg)
	if err != nil {
		return nil, tpmErr("read the EK certificate from NV", err)
	}
	if der, err := attest.TrimEKCertificate(raw); err == nil {
		raw = der
	}
	t.ekCert, t.ekCertRead = raw, true
	return raw, nil
}

// DefaultRegistrationID implements IDProvider: attest.RegistrationID of the EK.
func (t *TPM) DefaultRegistrationID(ctx context.Context) (string, error) {
	ek, err := t.EndorsementKey(ctx)
	if err != nil {
		return "", err
	}
	return attest.RegistrationID(ek), nil
}

// Credentials implements Attestation: a TPM device first connects with no
// credential, which asks the broker for a challenge.
func (t *TPM) Credentials(ctx context.Context, _ Session) (Credentials, error) {
	return Credentials{}, ctx.Err()
}

// RegisterFields implements RegisterFielder: "tpm": {endorsementKey,
// storageRootKey, endorsementKeyCertificate}, the last when the device has
// an EK certificate (EndorsementKeyCertificate). A certificate the TPM
// cannot read is left out rather than failing the provisioning: an
// individual enrollment does not need it, and a TPM group refuses the
// device without it, as it would a certificate it cannot use.
func (t *TPM) RegisterFields(ctx context.Context, _ Session) (map[string]any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	ek, srk, err := t.keys()
	if err != nil {
		return nil, err
	}
	fields := map[string]string{
		"endorsementKey": base64.StdEncoding.EncodeToString(ek.Public()),
		"storageRootKey": base64.StdEncoding.EncodeToString(srk.Public()),
	}
	if cert, err := t.ekCertificate(); err == nil && len(cert) > 0 {
		fields["endorsementKeyCertificate"] = base64.StdEncoding.EncodeToString(cert)
	}
	return map[string]any{"tpm": fields}, nil
}

// Challenge implements Challenger: it activates the blob in the TPM
// (optionally persisting the identity key) and signs the reconnect token,
// sr = the registration resource, skn = the challenge's keyName.
func (t *TPM) Challenge(ctx context.Context, s Session, c Challenge) (Credentials, error) {
	if err := ctx.Err(); err != nil {
		return Credentials{}, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	key, err := t.activate(c.AuthenticationKey, t.IdentityKeyHandle)
	if err != nil {
		return Credentials{}, err
	}
	defer key.Close() // flushes a transient key; a persisted one stays
	life := t.SASLifetime
	if life <= 0 {
		life = DefaultChallengeSASLifetime
	}
	tok, err := key.SASToken(s.Resource, c.KeyName, s.Now.Add(life))
	if err != nil {
		return Credentials{}, tpmErr("sign SAS token", err)
	}
	return Credentials{Password: tok}, nil
}

// Finish implements Finisher: it imports the hub key from the final
// registrationState.tpm.authenticationKey and persists it at HubKeyHandle.
func (t *TPM) Finish(ctx context.Context, _ Session, res *Result) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if res.State.TPM == nil || res.State.TPM.AuthenticationKey == "" {
		return fmt.Errorf("%w: assigned registration has no tpm.authenticationKey (hub key)", ErrProtocol)
	}
	blob, err := base64.StdEncoding.DecodeString(res.State.TPM.AuthenticationKey)
	if err != nil {
		return fmt.Errorf("%w: registrationState.tpm.authenticationKey: %w", ErrProtocol, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	handle := t.HubKeyHandle
	if handle == 0 {
		handle = DefaultHubKeyHandle
	}
	if t.NoPersistHubKey {
		handle = 0
	}
	key, err := t.activate(blob, handle)
	if err != nil {
		return err
	}
	hk := &HubKey{}
	if key.Persistent() {
		hk.Handle = fmt.Sprintf("0x%08x", uint32(key.Handle()))
	} else {
		hk.Public, hk.Private = key.Public(), key.Private()
	}
	res.HubKey = hk
	return key.Close()
}

// activate opens blob and, when handle is not zero, persists the key there.
// Called with t.mu held.
func (t *TPM) activate(blob []byte, handle tpm2.TPMHandle) (*devtpm.IdentityKey, error) {
	ek, srk, err := t.keys()
	if err != nil {
		return nil, err
	}
	key, err := devtpm.Activate(ek, srk, blob)
	if err != nil {
		var ce *devtpm.CommandError
		if !errors.As(err, &ce) {
			// Not the TPM refusing but the blob not parsing.
			return nil, fmt.Errorf("%w: activation blob: %w", ErrProtocol, err)
		}
		return nil, tpmErr("activate blob", err)
	}
	if handle != 0 {
		if err := key.Persist(handle); err != nil {
			return nil, errors.Join(tpmErr(fmt.Sprintf("persist key at 0x%08x", uint32(handle)), err), key.Close())
		}
	}
	return key, nil
}

// NewCertificateKey creates a signing key in the TPM under its SRK
// (creating and persisting the EK and SRK first if needed), for an
// operational certificate: give it to Config.CertificateKey. It is
// transient: once the certificate is issued, Persist it (at
// devtpm.CertKeyHandle, replacing the key of the previous certificate),
// or Close it to throw it away. It never leaves the TPM.
func (t *TPM) NewCertificateKey(ctx context.Context) (*devtpm.SigningKey, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	_, srk, err := t.keys()
	if err != nil {
		return nil, err
	}
	k, err := devtpm.CreateSigningKey(srk)
	if err != nil {
		return nil, tpmErr("create certificate key", err)
	}
	return k, nil
}

// HubResource returns the SAS resource of a device on an IoT hub,
// "{hub}/devices/{deviceId}".
func HubResource(hub, deviceID string) string { return hub + "/devices/" + deviceID }

// SignHubSAS signs an IoT hub SAS token (no skn) for resource (see
// HubResource) valid until expiry, with the hub key persisted at handle
// (DefaultHubKeyHandle unless configured otherwise). The HMAC runs in the
// TPM: the key never leaves it.
func SignHubSAS(tpm transport.TPM, handle tpm2.TPMHandle, resource string, expiry time.Time) (string, error) {
	key, err := devtpm.OpenIdentityKey(tpm, handle)
	if err != nil {
		return "", tpmErr(fmt.Sprintf("open hub key at 0x%08x", uint32(handle)), err)
	}
	tok, err := key.SASToken(resource, "", expiry)
	if err != nil {
		return "", tpmErr("sign hub SAS token", err)
	}
	return tok, nil
}
