// Package softtpm emulates in software the device half of DPS TPM
// attestation, for load generation and tests: an endorsement key (EK) and a
// storage root key (SRK) whose private keys are held in memory, their
// TPM2B_PUBLIC areas built from the TCG templates (so the server's strict
// parser accepts them), and the two TPM commands a device runs on the
// activation blob (docs/protocol.md section 5, "What the TPM does with it"):
//
//   - ActivateCredential (TPM 2.0 Part 3, 12.5): decrypt the seed with the
//     EK (RSA-OAEP label "IDENTITY\0", or ECDH + KDFe), check the
//     credential's integrity HMAC over encIdentity || Name(SRK), and decrypt
//     the credential (the inner wrapper key);
//   - Import (Part 3, 13.3): decrypt the duplication seed with the SRK
//     (label "DUPLICATE\0"), check the outer HMAC, remove the outer and the
//     inner wrapper, check the inner integrity digest, and return the HMAC
//     key carried in the sensitive area.
//
// It is not a TPM: keys live in process memory. It exists so that one
// process can act as thousands of TPM devices; device/devtpm is the real
// thing. A Device is safe for concurrent use (it holds no mutable state).
//
// It is test and load support: tests and the load tool (cmd/dps-load)
// import it, dpsd and device code never do. It sits above attest, whose
// blobs it opens, and device/devtpm, whose key templates it shares.
package softtpm

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm/tpm2"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/device/devtpm"
)

// Errors of this package; test with errors.Is.
var (
	// ErrMalformed means a structure given to a command does not parse (a TPM
	// answers TPM_RC_SIZE or TPM_RC_VALUE).
	ErrMalformed = errors.New("softtpm: malformed input")
	// ErrIntegrity means an integrity check failed: the blob was not made
	// for these keys, or was altered (a TPM answers TPM_RC_INTEGRITY).
	ErrIntegrity = errors.New("softtpm: integrity check failed")
	// ErrUnsupported means a key type or algorithm this emulation does not
	// implement.
	ErrUnsupported = errors.New("softtpm: unsupported")
)

// Alg selects a key algorithm: the device side's (devtpm.Alg), so that
// software and real TPMs are configured alike.
type Alg = devtpm.Alg

// Key algorithms.
const (
	// RSA2048 is the TCG RSA-2048 EK template L-1 and the RSA-2048 SRK
	// template with an empty unique (the Azure C SDK's).
	RSA2048 = devtpm.RSA2048
	// ECCP256 is the TCG ECC NIST P-256 EK template L-2 and SRK template.
	ECCP256 = devtpm.ECCP256
)

// EKTemplate returns the TCG default EK template for alg (devtpm's).
func EKTemplate(alg Alg) (tpm2.TPMTPublic, error) {
	t, err := devtpm.EKTemplateFor(alg)
	if err != nil {
		return tpm2.TPMTPublic{}, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return t, nil
}

// SRKTemplate returns the SRK template for alg (devtpm's: RSA-2048 with an
// empty unique, or ECC P-256). NewKey fills the unique field.
func SRKTemplate(alg Alg) (tpm2.TPMTPublic, error) {
	var t tpm2.TPMTPublic
	var err error
	switch alg {
	case RSA2048:
		t, err = devtpm.SRKTemplateFor(devtpm.SRKRSAEmptyUnique)
	case ECCP256:
		t, err = devtpm.SRKTemplateFor(devtpm.SRKECCP256)
	default:
		return tpm2.TPMTPublic{}, fmt.Errorf("%w: algorithm %v", ErrUnsupported, alg)
	}
	if err != nil {
		return tpm2.TPMTPublic{}, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return t, nil
}

// Key is an asymmetric restricted decryption key (an EK or SRK) held in
// memory: its public area and its private key.
type Key struct {
	public    tpm2.TPMTPublic
	public2B  []byte // marshalled TPM2B_PUBLIC
	name      []byte // nameAlg || H(TPMT_PUBLIC)
	sensitive []byte // marshalled TPMT_SENSITIVE
	rsa       *rsa.PrivateKey
	ecc       *ecdh.PrivateKey
	eccX      []byte // the public point's x coordinate
	symBits   int    // AES key bits of the key's symmetric definition
}

// NewKey generates a key for tmpl (type RSA-2048 or ECC P-256, nameAlg
// SHA-256, symmetric AES-CFB), filling tmpl's unique field with the public
// key, as a TPM does with TPM2_CreatePrimary. rand supplies the key material.
func NewKey(rand io.Reader, tmpl tpm2.TPMTPublic) (*Key, error) {
	if tmpl.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("%w: nameAlg %v (want SHA-256)", ErrUnsupported, tmpl.NameAlg)
	}
	k := &Key{}
	var sym *tpm2.TPMTSymDefObject
	var sens tpm2.TPMTSensitive
	seedValue := make([]byte, sha256.Size)
	if _, err := io.ReadFull(rand, seedValue); err != nil {
		return nil, fmt.Errorf("softtpm: read random: %w", err)
	}
	switch tmpl.Type {
	case tpm2.TPMAlgRSA:
		parms, err := tmpl.Parameters.RSADetail()
		if err != nil {
			return nil, fmt.Errorf("%w: RSA parameters: %w", ErrMalformed, err)
		}
		if parms.KeyBits != 2048 || (parms.Exponent != 0 && parms.Exponent != 65537) {
			return nil, fmt.Errorf("%w: RSA-%d exponent %d", ErrUnsupported, parms.KeyBits, parms.Exponent)
		}
		priv, err := rsa.GenerateKey(rand, 2048)
		if err != nil {
			return nil, fmt.Errorf("softtpm: generate RSA key: %w", err)
		}
		priv.Precompute()
		k.rsa = priv
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: priv.N.FillBytes(make([]byte, 256))})
		sym = &parms.Symmetric
		sens = tpm2.TPMTSensitive{
			SensitiveType: tpm2.TPMAlgRSA,
			SeedValue:     tpm2.TPM2BDigest{Buffer: seedValue},
			Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgRSA, &tpm2.TPM2BPrivateKeyRSA{Buffer: priv.Primes[0].FillBytes(make([]byte, 128))}),
		}
	case tpm2.TPMAlgECC:
		parms, err := tmpl.Parameters.ECCDetail()
		if err != nil {
			return nil, fmt.Errorf("%w: ECC parameters: %w", ErrMalformed, err)
		}
		if parms.CurveID != tpm2.TPMECCNistP256 {
			return nil, fmt.Errorf("%w: ECC curve %v", ErrUnsupported, parms.CurveID)
		}
		priv, err := ecdh.P256().GenerateKey(rand)
		if err != nil {
			return nil, fmt.Errorf("softtpm: generate ECC key: %w", err)
		}
		k.ecc = priv
		raw := priv.PublicKey().Bytes() // 0x04 || X || Y
		x, y := raw[1:33], raw[33:65]
		k.eccX = bytes.Clone(x)
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: bytes.Clone(x)},
			Y: tpm2.TPM2BECCParameter{Buffer: bytes.Clone(y)},
		})
		sym = &parms.Symmetric
		sens = tpm2.TPMTSensitive{
			SensitiveType: tpm2.TPMAlgECC,
			SeedValue:     tpm2.TPM2BDigest{Buffer: seedValue},
			Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: priv.Bytes()}),
		}
	default:
		return nil, fmt.Errorf("%w: key type %v", ErrUnsupported, tmpl.Type)
	}
	if sym.Algorithm != tpm2.TPMAlgAES {
		return nil, fmt.Errorf("%w: symmetric algorithm %v (want AES)", ErrUnsupported, sym.Algorithm)
	}
	if mode, err := sym.Mode.AES(); err != nil || *mode != tpm2.TPMAlgCFB {
		return nil, fmt.Errorf("%w: symmetric mode (want CFB)", ErrUnsupported)
	}
	bits, err := sym.KeyBits.AES()
	if err != nil {
		return nil, fmt.Errorf("%w: symmetric key bits: %w", ErrMalformed, err)
	}
	k.symBits = int(*bits)
	k.public = tmpl
	k.public2B = tpm2.Marshal(tpm2.New2B(tmpl))
	// Parse what was built with the server's strict parser: it gives the
	// Name and proves the area is acceptable.
	p, err := attest.ParsePublic(k.public2B)
	if err != nil {
		return nil, fmt.Errorf("softtpm: generated public area refused: %w", err)
	}
	k.name = p.Name()
	k.sensitive = tpm2.Marshal(sens)
	return k, nil
}

// Public returns the key's TPM2B_PUBLIC (size prefix included): what a
// device sends as endorsementKey or storageRootKey.
func (k *Key) Public() []byte { return k.public2B }

// Name returns the key's TPM Name: nameAlg || SHA-256(TPMT_PUBLIC).
func (k *Key) Name() []byte { return k.name }

// Sensitive returns the key's marshalled TPMT_SENSITIVE (its private part,
// a secret), for loading the same key into a real TPM with TPM2_Import.
func (k *Key) Sensitive() []byte { return k.sensitive }

// Decapsulate recovers the seed from a TPM2B_ENCRYPTED_SECRET's contents
// made for this key with label ("IDENTITY" or "DUPLICATE", without the
// NUL): RSA-OAEP-SHA256 with the NUL-terminated label, or ECDH with the
// ephemeral point followed by KDFe (Part 1, 11.4.10.3 and C.6.1).
func (k *Key) Decapsulate(encSecret []byte, label string) ([]byte, error) {
	switch {
	case k.rsa != nil:
		seed, err := rsa.DecryptOAEP(sha256.New(), nil, k.rsa, encSecret, []byte(label+"\x00"))
		if err != nil {
			// A TPM answers TPM_RC_VALUE: the secret was not made for this key.
			return nil, fmt.Errorf("%w: RSA-OAEP decrypt of the %s seed: %w", ErrIntegrity, label, err)
		}
		return seed, nil
	case k.ecc != nil:
		// TPMS_ECC_POINT: TPM2B x, TPM2B y, nothing after.
		x, rest, err := read2B(encSecret)
		if err != nil {
			return nil, fmt.Errorf("%w: encrypted secret point x: %w", ErrMalformed, err)
		}
		y, rest, err := read2B(rest)
		if err != nil || len(rest) != 0 || len(x) > 32 || len(y) > 32 {
			return nil, fmt.Errorf("%w: encrypted secret point y or trailing bytes", ErrMalformed)
		}
		pt := make([]byte, 65)
		pt[0] = 4
		copy(pt[1+32-len(x):33], x)
		copy(pt[33+32-len(y):], y)
		peer, err := ecdh.P256().NewPublicKey(pt)
		if err != nil {
			return nil, fmt.Errorf("%w: encrypted secret point not on P-256: %w", ErrMalformed, err)
		}
		z, err := k.ecc.ECDH(peer)
		if err != nil {
			return nil, fmt.Errorf("%w: ECDH: %w", ErrMalformed, err)
		}
		return tpm2.KDFe(crypto.SHA256, z, label, pt[1:33], k.eccX, 8*sha256.Size), nil
	}
	return nil, fmt.Errorf("%w: key has no private part", ErrUnsupported)
}

// Device is a software TPM holding an EK and an SRK.
type Device struct {
	// EK is the endorsement key (ActivateCredential's keyHandle).
	EK *Key
	// SRK is the storage root key (ActivateCredential's activateHandle and
	// Import's parent).
	SRK *Key
}

// NewDevice generates an EK and an SRK of alg from the TCG templates.
func NewDevice(rand io.Reader, alg Alg) (*Device, error) {
	ekT, err := EKTemplate(alg)
	if err != nil {
		return nil, err
	}
	srkT, err := SRKTemplate(alg)
	if err != nil {
		return nil, err
	}
	ek, err := NewKey(rand, ekT)
	if err != nil {
		return nil, fmt.Errorf("softtpm: EK: %w", err)
	}
	srk, err := NewKey(rand, srkT)
	if err != nil {
		return nil, fmt.Errorf("softtpm: SRK: %w", err)
	}
	return &Device{EK: ek, SRK: srk}, nil
}

// ActivateCredential is TPM2_ActivateCredential with the EK as keyHandle
// and the SRK as activateHandle: credentialBlob is the TPM2B_ID_OBJECT
// contents and encSecret the TPM2B_ENCRYPTED_SECRET contents (as in
// attest.ActivationBlob). It returns the credential (the inner wrapper key)
// after checking its integrity HMAC (Part 1, 24.5) in constant time.
func (d *Device) ActivateCredential(credentialBlob, encSecret []byte) ([]byte, error) {
	seed, err := d.EK.Decapsulate(encSecret, "IDENTITY")
	if err != nil {
		return nil, fmt.Errorf("softtpm: ActivateCredential: %w", err)
	}
	integrity, encIdentity, err := read2B(credentialBlob)
	if err != nil {
		return nil, fmt.Errorf("softtpm: ActivateCredential: %w: credential integrity: %w", ErrMalformed, err)
	}
	mac := hmac.New(sha256.New, tpm2.KDFa(crypto.SHA256, seed, "INTEGRITY", nil, nil, 8*sha256.Size))
	mac.Write(encIdentity)
	mac.Write(d.SRK.name)
	if !hmac.Equal(mac.Sum(nil), integrity) {
		return nil, fmt.Errorf("softtpm: ActivateCredential: %w: credential HMAC", ErrIntegrity)
	}
	plain := make([]byte, len(encIdentity))
	if err := cfbDecrypt(tpm2.KDFa(crypto.SHA256, seed, "STORAGE", d.SRK.name, nil, d.EK.symBits), plain, encIdentity); err != nil {
		return nil, fmt.Errorf("softtpm: ActivateCredential: %w", err)
	}
	cred, rest, err := read2B(plain)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("softtpm: ActivateCredential: %w: credential size", ErrMalformed)
	}
	return cred, nil
}

// Import is TPM2_Import under the SRK with encryptionKey = innerKey and
// symmetricAlg AES-128-CFB: public is the TPMT_PUBLIC of the object,
// duplicate the TPM2B_PRIVATE contents and encSeed the
// TPM2B_ENCRYPTED_SECRET contents. It checks the outer HMAC and the inner
// integrity digest (constant time) and returns the object's sensitive data:
// the HMAC key, for a keyed-hash object.
func (d *Device) Import(innerKey, public, duplicate, encSeed []byte) ([]byte, error) {
	if len(public) < 2 {
		return nil, fmt.Errorf("softtpm: Import: %w: public area too short", ErrMalformed)
	}
	if alg := tpm2.TPMAlgID(binary.BigEndian.Uint16(public)); alg != tpm2.TPMAlgKeyedHash {
		return nil, fmt.Errorf("softtpm: Import: %w: object type %v (want keyed hash)", ErrUnsupported, alg)
	}
	h := sha256.Sum256(public)
	name := binary.BigEndian.AppendUint16(make([]byte, 0, 2+sha256.Size), uint16(tpm2.TPMAlgSHA256))
	name = append(name, h[:]...)

	seed, err := d.SRK.Decapsulate(encSeed, "DUPLICATE")
	if err != nil {
		return nil, fmt.Errorf("softtpm: Import: %w", err)
	}
	// Outer wrapper (Part 1, 23.3.2.2): TPM2B(outerHMAC) || dupSensitive.
	outer, dup, err := read2B(duplicate)
	if err != nil {
		return nil, fmt.Errorf("softtpm: Import: %w: outer HMAC: %w", ErrMalformed, err)
	}
	mac := hmac.New(sha256.New, tpm2.KDFa(crypto.SHA256, seed, "INTEGRITY", nil, nil, 8*sha256.Size))
	mac.Write(dup)
	mac.Write(name)
	if !hmac.Equal(mac.Sum(nil), outer) {
		return nil, fmt.Errorf("softtpm: Import: %w: outer HMAC", ErrIntegrity)
	}
	inner := make([]byte, len(dup))
	if err := cfbDecrypt(tpm2.KDFa(crypto.SHA256, seed, "STORAGE", name, nil, d.SRK.symBits), inner, dup); err != nil {
		return nil, fmt.Errorf("softtpm: Import: outer wrapper: %w", err)
	}
	// Inner wrapper (Part 1, 23.3.2.3): TPM2B(H(sensitive2B || Name)) || sensitive2B.
	plain := inner
	if err := cfbDecrypt(innerKey, plain, inner); err != nil {
		return nil, fmt.Errorf("softtpm: Import: inner wrapper: %w", err)
	}
	digest, sensitive2B, err := read2B(plain)
	if err != nil {
		// Decrypted garbage: a wrong inner key, as the TPM would find.
		return nil, fmt.Errorf("softtpm: Import: %w: inner integrity size: %w", ErrIntegrity, err)
	}
	ih := sha256.New()
	ih.Write(sensitive2B)
	ih.Write(name)
	if subtle.ConstantTimeCompare(ih.Sum(nil), digest) != 1 {
		return nil, fmt.Errorf("softtpm: Import: %w: inner integrity digest", ErrIntegrity)
	}
	sensitive, rest, err := read2B(sensitive2B)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("softtpm: Import: %w: sensitive size", ErrMalformed)
	}
	// TPMT_SENSITIVE: type, TPM2B authValue, TPM2B seedValue, TPM2B sensitive.
	if len(sensitive) < 2 || tpm2.TPMAlgID(binary.BigEndian.Uint16(sensitive)) != tpm2.TPMAlgKeyedHash {
		return nil, fmt.Errorf("softtpm: Import: %w: sensitive type", ErrMalformed)
	}
	rest = sensitive[2:]
	for _, field := range []string{"authValue", "seedValue"} {
		if _, rest, err = read2B(rest); err != nil {
			return nil, fmt.Errorf("softtpm: Import: %w: sensitive %s: %w", ErrMalformed, field, err)
		}
	}
	key, rest, err := read2B(rest)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("softtpm: Import: %w: sensitive data", ErrMalformed)
	}
	return bytes.Clone(key), nil
}

// Activate opens a whole six-part activation blob (attest.ParseActivationBlob):
// ActivateCredential, then Import with the credential. It returns the HMAC
// key the blob carries: a secret.
func (d *Device) Activate(blob []byte) ([]byte, error) {
	parts, err := attest.ParseActivationBlob(blob)
	if err != nil {
		return nil, fmt.Errorf("softtpm: activate: %w: %w", ErrMalformed, err)
	}
	innerKey, err := d.ActivateCredential(parts.CredentialBlob, parts.EncryptedSecret)
	if err != nil {
		return nil, err
	}
	return d.Import(innerKey, parts.Public, parts.Duplicate, parts.EncryptedSeed)
}

// read2B splits a TPM2B off b: its contents and what follows.
func read2B(b []byte) (contents, rest []byte, err error) {
	if len(b) < 2 {
		return nil, nil, errors.New("size prefix truncated")
	}
	n := int(binary.BigEndian.Uint16(b))
	if n > len(b)-2 {
		return nil, nil, fmt.Errorf("size %d but %d bytes left", n, len(b)-2)
	}
	return b[2 : 2+n], b[2+n:], nil
}

// cfbDecrypt decrypts src into dst with AES-CFB under key and an all-zero IV.
func cfbDecrypt(key, dst, src []byte) error {
	block, err := aes.NewCipher(key)
	if err != nil {
		return fmt.Errorf("AES key: %w", err)
	}
	var iv [aes.BlockSize]byte
	cipher.NewCFBDecrypter(block, iv[:]).XORKeyStream(dst, src)
	return nil
}
