// Package devtpm is the device side of DPS TPM attestation, on go-tpm and any
// transport.TPM (a /dev/tpmrm0, swtpm, or the reference simulator):
//
//   - the endorsement key (EK) and storage root key (SRK), created from the
//     TCG/Azure templates or read from their persistent handles;
//   - Activate: open the activation blob the service sends (ActivateCredential
//     with the EK, Import under the SRK, Load), which yields an HMAC identity
//     key held by the TPM;
//   - HMAC and SASToken: sign with that key inside the TPM;
//   - SigningKey: an unrestricted ECDSA P-256 signing key created under the
//     SRK, a crypto.Signer for a certificate signing request and for the
//     TLS handshakes of the certificate issued for it (CertKeyHandle).
//
// Every transient object and session created here is flushed before return,
// except the objects returned to the caller, which Close flushes: a TPM
// without a resource manager (the simulator, swtpm) has only 3 transient
// slots. Persistent objects are never removed by Close.
//
// A TPM executes one command at a time and a Key is not safe for concurrent
// use: callers sharing one TPM between goroutines must serialize the calls
// of this package themselves. Errors say which TPM command failed
// (*CommandError) and wrap the TPM's response code, so that
// errors.Is(err, tpm2.TPMRCIntegrity) works.
package devtpm

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Persistent handles used by the Azure device SDKs (docs/protocol.md
// section 5, "What the TPM does with it").
const (
	// EKHandle is where the endorsement key is persisted (TCG EK credential
	// profile, the first RSA EK handle).
	EKHandle tpm2.TPMHandle = 0x81010001
	// SRKHandle is where the storage root key is persisted.
	SRKHandle tpm2.TPMHandle = 0x81000001
	// IdentityKeyHandle is where the activated HMAC identity key is
	// persisted.
	IdentityKeyHandle tpm2.TPMHandle = 0x81000100
)

// CertKeyHandle (signer.go) is dpsd's own: where a device keeps its
// operational certificate's key.

// Alg selects the key algorithm of an endorsement key.
type Alg int

// EK algorithms.
const (
	// RSA2048 is the TCG default EK template L-1 (RSA-2048, AES-128-CFB).
	RSA2048 Alg = iota
	// ECCP256 is the TCG default EK template L-2 (ECC NIST P-256, AES-128-CFB).
	ECCP256
)

// String implements fmt.Stringer.
func (a Alg) String() string {
	switch a {
	case RSA2048:
		return "rsa2048"
	case ECCP256:
		return "eccp256"
	}
	return fmt.Sprintf("Alg(%d)", int(a))
}

// SRKTemplate selects one of the storage root key templates in use. They
// give different keys on one TPM: the service must receive the public of the
// SRK the device really uses.
type SRKTemplate int

// SRK templates.
const (
	// SRKRSAEmptyUnique is RSA-2048 with an empty unique field, the Azure IoT
	// C SDK's SRK (and tpm2_createprimary's default).
	SRKRSAEmptyUnique SRKTemplate = iota
	// SRKRSAZeroUnique is RSA-2048 with 256 zero bytes of unique, the TCG
	// reference SRK template (and the Azure C# SDK's).
	SRKRSAZeroUnique
	// SRKECCP256 is the TCG reference ECC NIST P-256 SRK template.
	SRKECCP256
)

// String implements fmt.Stringer.
func (s SRKTemplate) String() string {
	switch s {
	case SRKRSAEmptyUnique:
		return "rsa2048-empty-unique"
	case SRKRSAZeroUnique:
		return "rsa2048-zero-unique"
	case SRKECCP256:
		return "eccp256"
	}
	return fmt.Sprintf("SRKTemplate(%d)", int(s))
}

// ErrUnknownTemplate is returned for an Alg or SRKTemplate value that names
// no template.
var ErrUnknownTemplate = errors.New("devtpm: unknown key template")

// ErrKeyMismatch is returned when a persistent handle holds a key of another
// algorithm than the one asked for.
var ErrKeyMismatch = errors.New("devtpm: persisted key has another algorithm")

// CommandError says which TPM command failed. Err is the TPM's response code
// (a tpm2.TPMRC, test it with errors.Is) or a transport error.
type CommandError struct {
	// Command is the TPM command name, e.g. "TPM2_ActivateCredential".
	Command string
	// Err is the cause.
	Err error
}

// Error implements error.
func (e *CommandError) Error() string { return "devtpm: " + e.Command + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *CommandError) Unwrap() error { return e.Err }

// tpmCmdErr wraps err (if any) with the command name.
func tpmCmdErr(command string, err error) error {
	if err == nil {
		return nil
	}
	return &CommandError{Command: command, Err: err}
}

// EKTemplateFor returns the TCG default EK template for alg (TCG EK
// Credential Profile, templates L-1 and L-2), as a fresh copy.
func EKTemplateFor(alg Alg) (tpm2.TPMTPublic, error) {
	switch alg {
	case RSA2048:
		return tpm2.RSAEKTemplate, nil
	case ECCP256:
		return tpm2.ECCEKTemplate, nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("%w: %v", ErrUnknownTemplate, alg)
}

// SRKTemplateFor returns the template t names, as a fresh copy.
func SRKTemplateFor(t SRKTemplate) (tpm2.TPMTPublic, error) {
	switch t {
	case SRKRSAEmptyUnique:
		tmpl := tpm2.RSASRKTemplate
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{})
		return tmpl, nil
	case SRKRSAZeroUnique:
		tmpl := tpm2.RSASRKTemplate
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)})
		return tmpl, nil
	case SRKECCP256:
		return tpm2.ECCSRKTemplate, nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("%w: %v", ErrUnknownTemplate, t)
}

// Key is an object in a TPM: transient (flushed by Close) or persistent
// (left in place by Close). It is not safe for concurrent use.
type Key struct {
	tpm    transport.TPM
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	public []byte
	closed bool
}

// Handle returns the TPM handle of the object.
func (k *Key) Handle() tpm2.TPMHandle { return k.handle }

// Name returns the TPM Name of the object (nameAlg || H(TPMT_PUBLIC)).
func (k *Key) Name() []byte { return k.name.Buffer }

// Public returns the TPM2B_PUBLIC bytes (2-byte size prefix, TPMT_PUBLIC) as
// the TPM reported them: what a device sends as endorsementKey or
// storageRootKey. The caller must not modify them.
func (k *Key) Public() []byte { return k.public }

// Persistent reports whether the object is at a persistent handle.
func (k *Key) Persistent() bool { return tpmIsPersistent(k.handle) }

// Close flushes a transient object from the TPM; for a persistent object it
// does nothing. It may be called more than once.
func (k *Key) Close() error {
	if k == nil || k.closed {
		return nil
	}
	k.closed = true
	if k.Persistent() {
		return nil
	}
	return tpmFlush(k.tpm, k.handle)
}

// Persist makes the object persistent at handle with TPM2_EvictControl
// (owner authorization, empty password), first evicting whatever object is
// already there. A transient object is flushed afterwards, and k then
// refers to the persistent copy.
func (k *Key) Persist(handle tpm2.TPMHandle) error {
	if !tpmIsPersistent(handle) {
		return fmt.Errorf("devtpm: persist: handle 0x%08x is not a persistent handle", uint32(handle))
	}
	if k.handle == handle {
		return nil
	}
	if err := EvictPersistent(k.tpm, handle); err != nil {
		return err
	}
	_, err := tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: k.handle, Name: k.name},
		PersistentHandle: handle,
	}.Execute(k.tpm)
	if err != nil {
		return tpmCmdErr("TPM2_EvictControl", fmt.Errorf("persist at 0x%08x: %w", uint32(handle), err))
	}
	if !k.Persistent() {
		if err := tpmFlush(k.tpm, k.handle); err != nil {
			return err
		}
	}
	k.handle = handle
	return nil
}

// EvictPersistent removes the persistent object at handle, if there is one
// (TPM2_EvictControl with owner authorization, empty password).
func EvictPersistent(tpm transport.TPM, handle tpm2.TPMHandle) error {
	rp, err := tpm2.ReadPublic{ObjectHandle: handle}.Execute(tpm)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil
	}
	if err != nil {
		return tpmCmdErr("TPM2_ReadPublic", fmt.Errorf("0x%08x: %w", uint32(handle), err))
	}
	_, err = tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: handle, Name: rp.Name},
		PersistentHandle: handle,
	}.Execute(tpm)
	return tpmCmdErr("TPM2_EvictControl", err)
}

// ReadPersistent returns the object at a persistent handle (TPM2_ReadPublic).
// A missing object gives an error for which errors.Is(err,
// tpm2.TPMRCHandle) is true.
func ReadPersistent(tpm transport.TPM, handle tpm2.TPMHandle) (*Key, error) {
	rp, err := tpm2.ReadPublic{ObjectHandle: handle}.Execute(tpm)
	if err != nil {
		return nil, tpmCmdErr("TPM2_ReadPublic", fmt.Errorf("0x%08x: %w", uint32(handle), err))
	}
	return &Key{tpm: tpm, handle: handle, name: rp.Name, public: tpm2.Marshal(rp.OutPublic)}, nil
}

// CreateEK creates the TCG default endorsement key for alg as a transient
// primary object in the endorsement hierarchy (TPM2_CreatePrimary, empty
// endorsement password). The TPM derives it from its endorsement seed, so it
// is the same key every time. Close flushes it.
func CreateEK(tpm transport.TPM, alg Alg) (*Key, error) {
	tmpl, err := EKTemplateFor(alg)
	if err != nil {
		return nil, err
	}
	return tpmCreatePrimary(tpm, tpm2.TPMRHEndorsement, tmpl)
}

// ReadOrCreateEK returns the EK persisted at EKHandle, or creates the default
// EK for alg and persists it there. A persisted EK of another algorithm is an
// ErrKeyMismatch.
func ReadOrCreateEK(tpm transport.TPM, alg Alg) (*Key, error) {
	tmpl, err := EKTemplateFor(alg)
	if err != nil {
		return nil, err
	}
	return tpmReadOrCreate(tpm, EKHandle, tpm2.TPMRHEndorsement, tmpl)
}

// CreateSRK creates the storage root key of template t as a transient primary
// object in the owner (storage) hierarchy (TPM2_CreatePrimary, empty owner
// password). Close flushes it.
func CreateSRK(tpm transport.TPM, t SRKTemplate) (*Key, error) {
	tmpl, err := SRKTemplateFor(t)
	if err != nil {
		return nil, err
	}
	return tpmCreatePrimary(tpm, tpm2.TPMRHOwner, tmpl)
}

// ReadOrCreateSRK returns the SRK persisted at SRKHandle, or creates one from
// template t and persists it there. A persisted SRK of another algorithm is an
// ErrKeyMismatch; which RSA template made a persisted SRK cannot be told, so
// the persisted one wins.
func ReadOrCreateSRK(tpm transport.TPM, t SRKTemplate) (*Key, error) {
	tmpl, err := SRKTemplateFor(t)
	if err != nil {
		return nil, err
	}
	return tpmReadOrCreate(tpm, SRKHandle, tpm2.TPMRHOwner, tmpl)
}

// tpmReadOrCreate reads the persistent object at handle or creates a primary
// from tmpl in hierarchy and persists it at handle.
func tpmReadOrCreate(tpm transport.TPM, handle, hierarchy tpm2.TPMHandle, tmpl tpm2.TPMTPublic) (*Key, error) {
	k, err := ReadPersistent(tpm, handle)
	if err == nil {
		pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](k.public[2:])
		if err != nil {
			return nil, fmt.Errorf("devtpm: public of 0x%08x: %w", uint32(handle), err)
		}
		if pub.Type != tmpl.Type {
			return nil, fmt.Errorf("%w: 0x%08x holds type 0x%04x, want 0x%04x", ErrKeyMismatch, uint32(handle), uint16(pub.Type), uint16(tmpl.Type))
		}
		return k, nil
	}
	if !errors.Is(err, tpm2.TPMRCHandle) {
		return nil, err
	}
	k, err = tpmCreatePrimary(tpm, hierarchy, tmpl)
	if err != nil {
		return nil, err
	}
	if err := k.Persist(handle); err != nil {
		return nil, errors.Join(err, k.Close())
	}
	return k, nil
}

// tpmCreatePrimary runs TPM2_CreatePrimary with an empty hierarchy password.
func tpmCreatePrimary(tpm transport.TPM, hierarchy tpm2.TPMHandle, tmpl tpm2.TPMTPublic) (*Key, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: hierarchy, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tmpl),
	}.Execute(tpm)
	if err != nil {
		return nil, tpmCmdErr("TPM2_CreatePrimary", err)
	}
	return &Key{tpm: tpm, handle: rsp.ObjectHandle, name: rsp.Name, public: tpm2.Marshal(rsp.OutPublic)}, nil
}

// tpmFlush runs TPM2_FlushContext.
func tpmFlush(tpm transport.TPM, h tpm2.TPMHandle) error {
	_, err := tpm2.FlushContext{FlushHandle: h}.Execute(tpm)
	return tpmCmdErr("TPM2_FlushContext", err)
}

// tpmIsPersistent reports whether h is a persistent handle (Part 2, 7.2
// TPM_HT_PERSISTENT = 0x81).
func tpmIsPersistent(h tpm2.TPMHandle) bool { return uint32(h)>>24 == 0x81 }
