package devtpm

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpmdps/dpsd/attest"
)

// tpmMaxBuffer is MAX_DIGEST_BUFFER, the most data one TPM2_HMAC or
// TPM2_SequenceUpdate takes (1024 on the reference TPM and swtpm).
const tpmMaxBuffer = 1024

// IdentityKey is the HMAC key a DPS activation blob delivered, loaded in the
// TPM. Public and Private can be stored (they are useless without this TPM's
// SRK) and loaded again with LoadIdentityKey. It is not safe for concurrent
// use.
type IdentityKey struct {
	Key
	private []byte
}

// Private returns the TPM2B_PRIVATE bytes (size prefix included) that
// TPM2_Import produced, wrapped by the SRK: with Public, what LoadIdentityKey
// needs. It is empty for a key opened with OpenIdentityKey.
func (k *IdentityKey) Private() []byte { return k.private }

// Activate opens a DPS activation blob (docs/protocol.md section 5, "What the TPM does with it")
// with the EK and SRK it was made for and loads the HMAC key it carries:
//
//  1. a policy session (SHA-256) satisfied by TPM2_PolicySecret with the
//     endorsement hierarchy (empty password): the EK's authPolicy;
//  2. TPM2_ActivateCredential (activateHandle = SRK with password auth,
//     keyHandle = EK with the policy session) recovers the inner wrapper key;
//     it fails unless the blob names this SRK;
//  3. TPM2_Import under the SRK with that key (AES-128-CFB inner wrapper);
//  4. TPM2_Load.
//
// The returned key is transient: Close flushes it, Persist moves it to a
// persistent handle (IdentityKeyHandle is the usual one). A blob made for
// another EK or SRK, or altered, fails with the TPM's error (usually
// TPM_RC_INTEGRITY, sometimes TPM_RC_SIZE, TPM_RC_VALUE or TPM_RC_ECC_POINT).
func Activate(ek, srk *Key, blob []byte) (*IdentityKey, error) {
	parts, err := attest.ParseActivationBlob(blob)
	if err != nil {
		return nil, fmt.Errorf("devtpm: activate: %w", err)
	}
	return ActivateParts(ek, srk, parts)
}

// ActivateParts is Activate for a blob already split into its parts.
func ActivateParts(ek, srk *Key, blob *attest.ActivationBlob) (*IdentityKey, error) {
	if ek == nil || srk == nil || ek.tpm == nil || srk.tpm == nil {
		return nil, errors.New("devtpm: activate: nil EK or SRK")
	}
	tpm := srk.tpm
	innerKey, err := tpmActivateCredential(tpm, ek, srk, blob.CredentialBlob, blob.EncryptedSecret)
	if err != nil {
		return nil, err
	}
	pub := tpm2.BytesAs2B[tpm2.TPMTPublic](blob.Public)
	imp, err := tpm2.Import{
		ParentHandle:  tpm2.AuthHandle{Handle: srk.handle, Name: srk.name, Auth: tpm2.PasswordAuth(nil)},
		EncryptionKey: tpm2.TPM2BData{Buffer: innerKey},
		ObjectPublic:  pub,
		Duplicate:     tpm2.TPM2BPrivate{Buffer: blob.Duplicate},
		InSymSeed:     tpm2.TPM2BEncryptedSecret{Buffer: blob.EncryptedSeed},
		Symmetric: tpm2.TPMTSymDef{
			Algorithm: tpm2.TPMAlgAES,
			KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
			Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
		},
	}.Execute(tpm)
	if err != nil {
		return nil, tpmCmdErr("TPM2_Import", err)
	}
	return LoadIdentityKey(srk, tpm2.Marshal(pub), tpm2.Marshal(imp.OutPrivate))
}

// tpmActivateCredential runs steps 1 and 2 of Activate and returns the
// credential (the inner wrapper key). The policy session is always flushed.
func tpmActivateCredential(tpm transport.TPM, ek, srk *Key, credentialBlob, encSecret []byte) (cred []byte, err error) {
	sess, closeSess, err := tpm2.PolicySession(tpm, tpm2.TPMAlgSHA256, 16)
	if err != nil {
		return nil, tpmCmdErr("TPM2_StartAuthSession", err)
	}
	defer func() {
		if cerr := closeSess(); cerr != nil {
			err = errors.Join(err, tpmCmdErr("TPM2_FlushContext", cerr))
		}
	}()
	// The default EK policy is PolicySecret(TPM_RH_ENDORSEMENT) (TCG EK
	// Credential Profile, 2.6.3).
	if _, err := (tpm2.PolicySecret{
		AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		PolicySession: sess.Handle(),
		NonceTPM:      sess.NonceTPM(),
	}).Execute(tpm); err != nil {
		return nil, tpmCmdErr("TPM2_PolicySecret", err)
	}
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.AuthHandle{Handle: srk.handle, Name: srk.name, Auth: tpm2.PasswordAuth(nil)},
		KeyHandle:      tpm2.AuthHandle{Handle: ek.handle, Name: ek.name, Auth: sess},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: credentialBlob},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encSecret},
	}.Execute(tpm)
	if err != nil {
		return nil, tpmCmdErr("TPM2_ActivateCredential", err)
	}
	return rsp.CertInfo.Buffer, nil
}

// LoadIdentityKey loads an identity key from the Public and Private of an
// earlier Activate (TPM2_Load under srk). Close flushes it.
func LoadIdentityKey(srk *Key, public, private []byte) (*IdentityKey, error) {
	if srk == nil || srk.tpm == nil {
		return nil, errors.New("devtpm: load identity key: nil SRK")
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](public)
	if err != nil {
		return nil, fmt.Errorf("devtpm: load identity key: public: %w", err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](private)
	if err != nil {
		return nil, fmt.Errorf("devtpm: load identity key: private: %w", err)
	}
	rsp, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: srk.handle, Name: srk.name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    *priv,
		InPublic:     *pub,
	}.Execute(srk.tpm)
	if err != nil {
		return nil, tpmCmdErr("TPM2_Load", err)
	}
	return &IdentityKey{
		Key:     Key{tpm: srk.tpm, handle: rsp.ObjectHandle, name: rsp.Name, public: append([]byte(nil), public...)},
		private: append([]byte(nil), private...),
	}, nil
}

// OpenIdentityKey returns the identity key persisted at handle (usually
// IdentityKeyHandle).
func OpenIdentityKey(tpm transport.TPM, handle tpm2.TPMHandle) (*IdentityKey, error) {
	k, err := ReadPersistent(tpm, handle)
	if err != nil {
		return nil, err
	}
	return &IdentityKey{Key: *k}, nil
}

// HMAC computes HMAC-SHA256(key, data) inside the TPM: TPM2_HMAC for up to
// 1024 bytes, an HMAC sequence (TPM2_HMAC_Start, TPM2_SequenceUpdate,
// TPM2_SequenceComplete) for more, which needs a free transient object slot.
// The key's authValue is empty.
func (k *IdentityKey) HMAC(data []byte) ([]byte, error) {
	auth := tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(nil)}
	if len(data) <= tpmMaxBuffer {
		rsp, err := tpm2.Hmac{
			Handle:  auth,
			Buffer:  tpm2.TPM2BMaxBuffer{Buffer: data},
			HashAlg: tpm2.TPMAlgSHA256,
		}.Execute(k.tpm)
		if err != nil {
			return nil, tpmCmdErr("TPM2_HMAC", err)
		}
		return rsp.OutHMAC.Buffer, nil
	}
	start, err := tpm2.HmacStart{Handle: auth, HashAlg: tpm2.TPMAlgSHA256}.Execute(k.tpm)
	if err != nil {
		return nil, tpmCmdErr("TPM2_HMAC_Start", err)
	}
	seq := tpm2.AuthHandle{Handle: start.SequenceHandle, Auth: tpm2.PasswordAuth(nil)}
	for len(data) > tpmMaxBuffer {
		if _, err := (tpm2.SequenceUpdate{
			SequenceHandle: seq,
			Buffer:         tpm2.TPM2BMaxBuffer{Buffer: data[:tpmMaxBuffer]},
		}).Execute(k.tpm); err != nil {
			// A failed sequence is still loaded: flush it.
			return nil, errors.Join(tpmCmdErr("TPM2_SequenceUpdate", err), tpmFlush(k.tpm, start.SequenceHandle))
		}
		data = data[tpmMaxBuffer:]
	}
	rsp, err := tpm2.SequenceComplete{
		SequenceHandle: seq,
		Buffer:         tpm2.TPM2BMaxBuffer{Buffer: data},
		Hierarchy:      tpm2.TPMRHNull,
	}.Execute(k.tpm)
	if err != nil {
		return nil, errors.Join(tpmCmdErr("TPM2_SequenceComplete", err), tpmFlush(k.tpm, start.SequenceHandle))
	}
	return rsp.Result.Buffer, nil
}

// SASToken signs a DPS SAS token with the identity key in the TPM
// (docs/protocol.md section 6):
//
//	SharedAccessSignature sr={url-encoded resource}&sig={url-encoded base64 HMAC}&se={expiry}&skn={keyName}
//
// where the HMAC is over url-encoded resource + "\n" + expiry (Unix
// seconds). resource is "{idScope}/registrations/{registrationId}"; keyName
// is the keyName of the challenge (empty: no skn field).
func (k *IdentityKey) SASToken(resource, keyName string, expiry time.Time) (string, error) {
	return SASToken(k.HMAC, resource, keyName, expiry)
}

// SASToken builds a DPS SAS token like (*IdentityKey).SASToken with any
// HMAC-SHA256 signer, e.g. a key held in software by a test or load tool.
func SASToken(sign func(data []byte) ([]byte, error), resource, keyName string, expiry time.Time) (string, error) {
	sr := url.QueryEscape(resource)
	se := strconv.FormatInt(expiry.Unix(), 10)
	sig, err := sign([]byte(sr + "\n" + se))
	if err != nil {
		return "", fmt.Errorf("devtpm: sign SAS token: %w", err)
	}
	if len(sig) != sha256.Size {
		return "", fmt.Errorf("devtpm: sign SAS token: signature of %d bytes, want %d", len(sig), sha256.Size)
	}
	tok := "SharedAccessSignature sr=" + sr +
		"&sig=" + url.QueryEscape(base64.StdEncoding.EncodeToString(sig)) +
		"&se=" + se
	if keyName != "" {
		tok += "&skn=" + url.QueryEscape(keyName)
	}
	return tok, nil
}
