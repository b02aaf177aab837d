package attest

// The TPM activation blob (docs/protocol.md section 5): an HMAC key duplicated
// to the device's SRK with an inner wrapper whose AES key is sealed to the
// EK by MakeCredential, bound to the SRK's Name. References are to the TPM
// 2.0 Library specification, Part 1 "Architecture", Part 2 "Structures" and
// Part 3 "Commands".

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm/tpm2"
)

// ErrMalformedBlob means bytes are not a well-formed six-part activation
// blob. It is wrapped with the reason; test with errors.Is.
var ErrMalformedBlob = errors.New("attest: malformed activation blob")

// ErrBadHMACKey means the key given to NewActivationBlob has a length a TPM
// would not import as an HMAC key.
var ErrBadHMACKey = errors.New("attest: bad HMAC key length")

// Sizes of the identity key material (docs/protocol.md section 5, "The activation blob").
const (
	// MinHMACKeySize and MaxHMACKeySize bound the HMAC key that
	// NewActivationBlob carries; 32 bytes is the usual size. The upper bound
	// is the SHA-256 block size, so the TPM uses the key as is.
	MinHMACKeySize = 16
	MaxHMACKeySize = 64
	// tpmInnerKeySize is the AES-128 inner wrapper key (Part 1, 23.3.2.3).
	tpmInnerKeySize = 16
	// tpmSeedValueSize is the obfuscation value of the keyed-hash object
	// (Part 1, 27.2.5): the size of the nameAlg digest.
	tpmSeedValueSize = sha256.Size
	// tpmBlobParts is the number of size-prefixed parts of a blob.
	tpmBlobParts = 6
)

// ActivationBlob is the six parts of an activation blob, each without its
// 2-byte size prefix, in wire order (docs/protocol.md section 5, "The activation blob"). It is
// what a device hands to its TPM.
type ActivationBlob struct {
	// CredentialBlob is the TPM2B_ID_OBJECT contents (Part 2, 12.4.3): the
	// integrity HMAC as a TPM2B_DIGEST, then encIdentity. ActivateCredential's
	// credentialBlob.
	CredentialBlob []byte
	// EncryptedSecret is the TPM2B_ENCRYPTED_SECRET contents encrypting the
	// credential seed to the EK. ActivateCredential's secret.
	EncryptedSecret []byte
	// Duplicate is the TPM2B_PRIVATE contents of the doubly wrapped HMAC key.
	// Import's duplicate.
	Duplicate []byte
	// EncryptedSeed is the TPM2B_ENCRYPTED_SECRET contents encrypting the
	// duplication seed to the SRK. Import's inSymSeed.
	EncryptedSeed []byte
	// Public is the TPMT_PUBLIC of the HMAC key (the contents of a
	// TPM2B_PUBLIC). Import's objectPublic.
	Public []byte
	// EncryptedData is the optional sixth part; empty in blobs written here.
	EncryptedData []byte
}

// ParseActivationBlob splits a blob into its six parts. It checks only the
// framing (six size-prefixed parts, nothing after the last one); the TPM
// checks the contents. The parts alias b.
func ParseActivationBlob(b []byte) (*ActivationBlob, error) {
	var parts [tpmBlobParts][]byte
	rest := b
	for i := range parts {
		if len(rest) < 2 {
			return nil, fmt.Errorf("%w: part %d: size prefix truncated", ErrMalformedBlob, i+1)
		}
		n := int(binary.BigEndian.Uint16(rest))
		rest = rest[2:]
		if n > len(rest) {
			return nil, fmt.Errorf("%w: part %d: size %d but only %d bytes left", ErrMalformedBlob, i+1, n, len(rest))
		}
		parts[i] = rest[:n:n]
		rest = rest[n:]
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after part %d", ErrMalformedBlob, len(rest), tpmBlobParts)
	}
	for i, name := range [...]string{"credential blob", "encrypted secret", "duplicate", "encrypted seed", "public"} {
		if len(parts[i]) == 0 {
			return nil, fmt.Errorf("%w: part %d (%s) is empty", ErrMalformedBlob, i+1, name)
		}
	}
	return &ActivationBlob{
		CredentialBlob:  parts[0],
		EncryptedSecret: parts[1],
		Duplicate:       parts[2],
		EncryptedSeed:   parts[3],
		Public:          parts[4],
		EncryptedData:   parts[5],
	}, nil
}

// Marshal writes the six parts back in wire order, each with its size prefix.
func (a *ActivationBlob) Marshal() []byte {
	parts := [...][]byte{a.CredentialBlob, a.EncryptedSecret, a.Duplicate, a.EncryptedSeed, a.Public, a.EncryptedData}
	n := 0
	for _, p := range parts {
		n += 2 + len(p)
	}
	out := make([]byte, 0, n)
	for _, p := range parts {
		out = tpmAppend2B(out, p)
	}
	return out
}

// NewActivationBlob builds the six-part activation blob that delivers hmacKey
// to the TPM holding ek and srk, and only to it (docs/protocol.md section 5, "The activation blob"):
//
//  1. the identity key: a KEYEDHASH HMAC-SHA256 object whose sensitive part
//     is hmacKey;
//  2. the inner wrapper (Part 1, 23.3.2.3): AES-128-CFB under a random
//     innerKey over TPM2B(H(sensitive2B || Name)) || sensitive2B;
//  3. the outer wrapper to the SRK (Part 1, 23.3.2.2): a seed encapsulated
//     to the SRK with label "DUPLICATE", AES-CFB under KDFa(seed, "STORAGE",
//     Name), HMAC under KDFa(seed, "INTEGRITY");
//  4. innerKey as a credential to the EK for the SRK's Name (Part 1, 24
//     "Credential Protection"; TPM2_MakeCredential done in software).
//
// So ActivateCredential succeeds only in the TPM with the EK's private key,
// and only when the object it names is the SRK; Import then needs the SRK's
// private key. rand supplies every random byte (crypto/rand.Reader in
// production). ek and srk must be restricted decryption keys (every EK and
// SRK template is); hmacKey must be MinHMACKeySize to MaxHMACKeySize bytes.
// With RSA-2048 keys the blob is 766 bytes, with ECC P-256 keys 390.
func NewActivationBlob(rand io.Reader, ek, srk *Public, hmacKey []byte) ([]byte, error) {
	if ek == nil || srk == nil {
		return nil, errors.New("attest: activation blob: nil EK or SRK")
	}
	if ek.kemErr != nil {
		return nil, fmt.Errorf("attest: activation blob: EK: %w", ek.kemErr)
	}
	if srk.kemErr != nil {
		return nil, fmt.Errorf("attest: activation blob: SRK: %w", srk.kemErr)
	}
	if len(hmacKey) < MinHMACKeySize || len(hmacKey) > MaxHMACKeySize {
		return nil, fmt.Errorf("%w: %d bytes, want %d to %d", ErrBadHMACKey, len(hmacKey), MinHMACKeySize, MaxHMACKeySize)
	}

	// Random material: the obfuscation seedValue and the inner wrapper key.
	var random [tpmSeedValueSize + tpmInnerKeySize]byte
	if _, err := io.ReadFull(rand, random[:]); err != nil {
		return nil, fmt.Errorf("attest: activation blob: read random: %w", err)
	}
	seedValue, innerKey := random[:tpmSeedValueSize], random[tpmSeedValueSize:]

	// 1. The identity key: TPMT_PUBLIC (Part 2, 12.2.4) of a KEYEDHASH
	// HMAC-SHA256 key whose unique = H_nameAlg(seedValue || sensitive) (Part
	// 1, 27.2.5; Part 2, 12.2.3.2 TPMU_PUBLIC_ID keyedHash), and its
	// TPMT_SENSITIVE (Part 2, 12.3.2.4). Both have a fixed shape, so they are
	// written by tpmIdentityPublic and tpmIdentitySensitive; the tests check
	// them byte for byte against go-tpm's tpm2.Marshal (reflection-based
	// marshalling was a third of the cost of a blob).
	unique := sha256.New()
	unique.Write(seedValue)
	unique.Write(hmacKey)
	idPublic := tpmIdentityPublic(unique.Sum(nil))
	// Name(idKey) = nameAlg || SHA-256(TPMT_PUBLIC) (Part 1, 16).
	idPublicHash := sha256.Sum256(idPublic)
	idName := make([]byte, 0, 2+sha256.Size)
	idName = binary.BigEndian.AppendUint16(idName, uint16(tpm2.TPMAlgSHA256))
	idName = append(idName, idPublicHash[:]...)
	sensitive := tpmIdentitySensitive(seedValue, hmacKey)

	// 2. Inner wrapper (Part 1, 23.3.2.3 "Inner Duplication Wrapper"):
	// innerIntegrity = H_nameAlg(TPM2B_SENSITIVE || Name), with the
	// sensitive's size prefix and without the Name's;
	// encSensitive = CFB_innerKey(TPM2B(innerIntegrity) || TPM2B_SENSITIVE),
	// IV all zeros. The hash is the imported object's nameAlg (SHA-256).
	plain := make([]byte, 0, 2+sha256.Size+2+len(sensitive))
	plain = append(plain, 0, sha256.Size) // TPM2B_DIGEST size, filled below
	plain = append(plain, make([]byte, sha256.Size)...)
	sensitive2B := len(plain)
	plain = tpmAppend2B(plain, sensitive)
	inner := sha256.New()
	inner.Write(plain[sensitive2B:])
	inner.Write(idName)
	inner.Sum(plain[2:2])
	if err := tpmCFBEncrypt(innerKey, plain); err != nil {
		return nil, fmt.Errorf("attest: activation blob: inner wrapper: %w", err)
	}
	encInner := plain

	// 3. Outer wrapper (Part 1, 23.3.2.2 "Outer Duplication Wrapper"; Part 1,
	// 24.4 "Symmetric Encryption" and 24.5 "HMAC"): seed encapsulated to the
	// SRK (RSA-OAEP or ECDH+KDFe, label "DUPLICATE\0"); symKey =
	// KDFa(seed, "STORAGE", Name, "", keyBits of the SRK's symmetric
	// definition); integrityKey = KDFa(seed, "INTEGRITY", "", "", digest size);
	// outerHMAC = HMAC(integrityKey, dupSensitive || Name). Hash and cipher are
	// the SRK's (its nameAlg is SHA-256, checked by ParsePublic).
	seed, encSeed, err := srk.encapsulate(rand, "DUPLICATE")
	if err != nil {
		return nil, fmt.Errorf("attest: activation blob: encapsulate seed to SRK: %w", err)
	}
	// TPM2B_PRIVATE contents (Part 2, 12.3.7): TPM2B(outerHMAC) || dup.
	private, err := tpmProtect(srk, seed, idName, encInner)
	if err != nil {
		return nil, fmt.Errorf("attest: activation blob: outer wrapper: %w", err)
	}

	// 4. The inner key as a credential to the EK, bound to the SRK's Name
	// (Part 3, 12.6 TPM2_MakeCredential, done in software).
	idObject, encSecret, err := makeCredential(rand, ek, srk.name, innerKey)
	if err != nil {
		return nil, fmt.Errorf("attest: activation blob: make credential to EK: %w", err)
	}

	blob := &ActivationBlob{
		CredentialBlob:  idObject,
		EncryptedSecret: encSecret,
		Duplicate:       private,
		EncryptedSeed:   encSeed,
		Public:          idPublic,
		EncryptedData:   nil, // part 6: always written, empty
	}
	return blob.Marshal(), nil
}

// tpmHash is the hash of every key this package accepts (nameAlg SHA-256).
const tpmHash = crypto.SHA256

// tpmIdentityPublicPrefix is the marshalled TPMT_PUBLIC of the identity key
// up to its unique digest (Part 2, 12.2.4, 12.2.3.3, 11.1.19): type
// TPM_ALG_KEYEDHASH (0x0008), nameAlg TPM_ALG_SHA256 (0x000b),
// objectAttributes 0x00040440 (sign, bit 18 | noDA, bit 10 | userWithAuth,
// bit 6; fixedTPM, fixedParent and sensitiveDataOrigin must be clear for
// TPM2_Import, Part 3, 13.3.1), an empty authPolicy (0x0000),
// TPMT_KEYEDHASH_SCHEME {TPM_ALG_HMAC (0x0005), TPM_ALG_SHA256 (0x000b)},
// then the size of the unique TPM2B_DIGEST (0x0020).
const tpmIdentityPublicPrefix = "\x00\x08" + "\x00\x0b" + "\x00\x04\x04\x40" + "\x00\x00" + "\x00\x05\x00\x0b" + "\x00\x20"

// tpmIdentityPublic returns the identity key's marshalled TPMT_PUBLIC with
// the given 32-byte unique digest.
func tpmIdentityPublic(unique []byte) []byte {
	out := make([]byte, 0, len(tpmIdentityPublicPrefix)+len(unique))
	out = append(out, tpmIdentityPublicPrefix...)
	return append(out, unique...)
}

// tpmIdentitySensitive returns the identity key's marshalled TPMT_SENSITIVE
// (Part 2, 12.3.2.4): sensitiveType TPM_ALG_KEYEDHASH (0x0008), an empty
// authValue, the seedValue TPM2B_DIGEST, the key as TPM2B_SENSITIVE_DATA.
func tpmIdentitySensitive(seedValue, key []byte) []byte {
	out := make([]byte, 0, 2+2+2+len(seedValue)+2+len(key))
	out = binary.BigEndian.AppendUint16(out, uint16(tpm2.TPMAlgKeyedHash))
	out = tpmAppend2B(out, nil)
	out = tpmAppend2B(out, seedValue)
	return tpmAppend2B(out, key)
}

// tpmAppend2B appends b to out as a TPM2B: a big-endian UINT16 size, then
// the bytes (Part 2, 10.4 "Sized Buffers").
func tpmAppend2B(out, b []byte) []byte {
	out = binary.BigEndian.AppendUint16(out, uint16(len(b)))
	return append(out, b...)
}

// tpmCFBEncrypt encrypts buf in place with AES in CFB mode and an all-zero
// IV, the TPM's symmetric encryption for protected objects (Part 1, 11.4.6.3;
// the IV is zero because every key is used once).
func tpmCFBEncrypt(key, buf []byte) error {
	block, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	var iv [aes.BlockSize]byte
	cipher.NewCFBEncrypter(block, iv[:]).XORKeyStream(buf, buf)
	return nil
}

// encapsulate shares a fresh seed with the TPM that holds p's private key
// (Part 1, 24 "Secret Sharing"; label without its terminating NUL) and
// returns the seed and the TPM2B_ENCRYPTED_SECRET contents that carry it.
// RSA keys use go-tpm (RSA-OAEP with the label). ECC keys are done here,
// because go-tpm marshals the ephemeral point by reflection, a measurable
// share of the server's CPU with ECC devices: an ephemeral P-256 key e,
// Z = x(e · P), seed = KDFe(SHA-256, Z, label, x(e·G), x(P), 256) (Part 1,
// 11.4.10.3), and the ciphertext is the TPMS_ECC_POINT e·G (Part 2,
// 11.2.5.2: TPM2B x, TPM2B y).
func (p *Public) encapsulate(rand io.Reader, label string) (seed, encSeed []byte, err error) {
	if p.ecdh == nil {
		return p.kem.Encapsulate(rand, label)
	}
	eph, err := p.ecdh.Curve().GenerateKey(rand)
	if err != nil {
		return nil, nil, fmt.Errorf("ephemeral ECC key: %w", err)
	}
	z, err := eph.ECDH(p.ecdh)
	if err != nil {
		return nil, nil, fmt.Errorf("ECDH: %w", err)
	}
	ephPoint, peerPoint := eph.PublicKey().Bytes(), p.ecdh.Bytes() // 0x04 || x || y
	n := (len(ephPoint) - 1) / 2
	ephX, ephY, peerX := ephPoint[1:1+n], ephPoint[1+n:], peerPoint[1:1+n]
	seed = tpm2.KDFe(tpmHash, z, label, ephX, peerX, 8*sha256.Size)
	encSeed = make([]byte, 0, 4+2*n)
	encSeed = tpmAppend2B(encSeed, ephX)
	encSeed = tpmAppend2B(encSeed, ephY)
	return seed, encSeed, nil
}

// makeCredential is TPM2_MakeCredential in software (Part 3, 12.6):
// credential is protected (tpmProtect) for the TPM holding ek's private key
// with a seed encapsulated to ek under the label "IDENTITY", and bound to
// the object Name name. It returns the TPM2B_ID_OBJECT contents (TPM2B
// integrityHMAC || encIdentity) and the TPM2B_ENCRYPTED_SECRET contents,
// without their own size prefixes.
func makeCredential(rand io.Reader, ek *Public, name, credential []byte) (idObject, encSecret []byte, err error) {
	seed, encSecret, err := ek.encapsulate(rand, "IDENTITY")
	if err != nil {
		return nil, nil, err
	}
	idObject, err = tpmProtect(ek, seed, name, tpmAppend2B(make([]byte, 0, 2+len(credential)), credential))
	if err != nil {
		return nil, nil, err
	}
	return idObject, encSecret, nil
}

// tpmProtect is the protection a seed shared with parent gives data bound
// to the object Name name, the same for a duplication's outer wrapper (Part
// 1, 23.3.2.2) and a credential (Part 1, 24.4 "Symmetric Encryption" and
// 24.5 "HMAC"): data is encrypted in place with AES-CFB under KDFa(seed,
// "STORAGE", name, "", parent's AES key bits), IV 0, and the result is
// TPM2B(HMAC(KDFa(seed, "INTEGRITY", "", "", 256), data || name)) || data.
// The hash is parent's nameAlg, SHA-256 (checked by ParsePublic).
func tpmProtect(parent *Public, seed, name, data []byte) ([]byte, error) {
	bits, err := parent.kem.SymmetricParameters().KeyBits.AES()
	if err != nil {
		return nil, fmt.Errorf("symmetric definition: %w", err)
	}
	if err := tpmCFBEncrypt(tpm2.KDFa(tpmHash, seed, "STORAGE", name, nil, int(*bits)), data); err != nil {
		return nil, err
	}
	mac := hmac.New(sha256.New, tpm2.KDFa(tpmHash, seed, "INTEGRITY", nil, nil, 8*sha256.Size))
	mac.Write(data)
	mac.Write(name)
	out := make([]byte, 0, 2+sha256.Size+len(data))
	out = tpmAppend2B(out, mac.Sum(nil))
	return append(out, data...), nil
}
