package devtpm

import (
	"crypto"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"math/big"

	"encoding/asn1"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// CertKeyHandle is where a device keeps the private key of its
// operational certificate (dps-device provision --issue-cert): the next
// owner handle after the identity key (0x81000100) and the hub key
// (0x81000101).
const CertKeyHandle tpm2.TPMHandle = 0x81000102

// SigningKeyTemplate is the template of a certificate key: an ECC NIST
// P-256 signing key, not restricted (it signs any digest: a CSR, a TLS
// handshake), fixedTPM and fixedParent (it never leaves this TPM, not even
// wrapped), generated inside the TPM (sensitiveDataOrigin), used with an
// empty password (userWithAuth), with no scheme of its own (each signature
// names ECDSA and its hash).
func SigningKeyTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			CurveID: tpm2.TPMECCNistP256,
			Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// SigningKey is an ECDSA P-256 key held by the TPM, a crypto.Signer: it
// signs a certificate signing request and, later, the device's TLS
// handshakes with the certificate issued for it, without the private key
// ever leaving the TPM. Not safe for concurrent use (a TPM runs one
// command at a time): callers sharing a TPM serialize, as with Key.
type SigningKey struct {
	Key
	pub *ecdsa.PublicKey
}

// CreateSigningKey creates a new signing key under srk (TPM2_Create with
// SigningKeyTemplate, then TPM2_Load). It is transient: Persist keeps it
// at a handle (CertKeyHandle), Close flushes it.
func CreateSigningKey(srk *Key) (*SigningKey, error) {
	if srk == nil || srk.tpm == nil {
		return nil, errors.New("devtpm: create signing key: nil SRK")
	}
	parent := tpm2.AuthHandle{Handle: srk.handle, Name: srk.name, Auth: tpm2.PasswordAuth(nil)}
	created, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(SigningKeyTemplate())}.Execute(srk.tpm)
	if err != nil {
		return nil, tpmCmdErr("TPM2_Create", err)
	}
	loaded, err := tpm2.Load{ParentHandle: parent, InPrivate: created.OutPrivate, InPublic: created.OutPublic}.Execute(srk.tpm)
	if err != nil {
		return nil, tpmCmdErr("TPM2_Load", err)
	}
	k := &SigningKey{Key: Key{tpm: srk.tpm, handle: loaded.ObjectHandle, name: loaded.Name, public: tpm2.Marshal(created.OutPublic)}}
	if k.pub, err = signingPublic(k.public); err != nil {
		return nil, errors.Join(err, k.Close())
	}
	return k, nil
}

// OpenSigningKey returns the signing key persisted at handle; a key of
// another kind there (not an unrestricted ECC P-256 signing key) is an
// ErrKeyMismatch.
func OpenSigningKey(tpm transport.TPM, handle tpm2.TPMHandle) (*SigningKey, error) {
	k, err := ReadPersistent(tpm, handle)
	if err != nil {
		return nil, err
	}
	pub, err := signingPublic(k.public)
	if err != nil {
		return nil, fmt.Errorf("0x%08x: %w", uint32(handle), err)
	}
	return &SigningKey{Key: *k, pub: pub}, nil
}

// signingPublic reads the ECDSA key of a signing key's TPM2B_PUBLIC.
func signingPublic(public []byte) (*ecdsa.PublicKey, error) {
	p, err := tpm2.Unmarshal[tpm2.TPM2BPublic](public)
	if err != nil {
		return nil, fmt.Errorf("devtpm: signing key public: %w", err)
	}
	c, err := p.Contents()
	if err != nil {
		return nil, fmt.Errorf("devtpm: signing key public: %w", err)
	}
	if c.Type != tpm2.TPMAlgECC || !c.ObjectAttributes.SignEncrypt || c.ObjectAttributes.Restricted || c.ObjectAttributes.Decrypt {
		return nil, fmt.Errorf("%w: not an unrestricted ECC signing key", ErrKeyMismatch)
	}
	parms, err := c.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("devtpm: signing key parameters: %w", err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 {
		return nil, fmt.Errorf("%w: ECC curve 0x%04x, want NIST P-256", ErrKeyMismatch, uint16(parms.CurveID))
	}
	point, err := c.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("devtpm: signing key point: %w", err)
	}
	pub, err := tpm2.ECDSAPub(parms, point)
	if err != nil {
		return nil, fmt.Errorf("devtpm: signing key point: %w", err)
	}
	return pub, nil
}

// Public returns the ECDSA public key (crypto.Signer).
func (k *SigningKey) Public() crypto.PublicKey { return k.pub }

// Sign signs digest with ECDSA inside the TPM (TPM2_Sign, a null hash
// check ticket: the key is not restricted) and returns the ASN.1 DER
// signature crypto/ecdsa would (crypto.Signer). opts.HashFunc() must be
// SHA-256, SHA-384 or SHA-512 and digest of its size; rand is not used.
func (k *SigningKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var alg tpm2.TPMIAlgHash
	switch h := opts.HashFunc(); h {
	case crypto.SHA256:
		alg = tpm2.TPMAlgSHA256
	case crypto.SHA384:
		alg = tpm2.TPMAlgSHA384
	case crypto.SHA512:
		alg = tpm2.TPMAlgSHA512
	default:
		return nil, fmt.Errorf("devtpm: sign: hash %v not supported (SHA-256, SHA-384, SHA-512)", h)
	}
	if len(digest) != opts.HashFunc().Size() {
		return nil, fmt.Errorf("devtpm: sign: digest of %d bytes for %v", len(digest), opts.HashFunc())
	}
	rsp, err := tpm2.Sign{
		KeyHandle: tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(nil)},
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: alg}),
		},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(k.tpm)
	if err != nil {
		return nil, tpmCmdErr("TPM2_Sign", err)
	}
	sig, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("devtpm: sign: %w", err)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(sig.SignatureR.Buffer),
		new(big.Int).SetBytes(sig.SignatureS.Buffer),
	})
}
