package attest

// Strict parsing of TPM 2.0 public areas (TPM2B_PUBLIC) of endorsement keys
// and storage root keys. References are to the TPM 2.0 Library
// specification, Part 1 "Architecture" and Part 2 "Structures".

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// Sentinel errors of ParsePublic. Every rejection is a *KeyError that wraps
// exactly one of them, so callers can test with errors.Is.
var (
	// ErrMalformedPublic means the bytes are not a well-formed TPM2B_PUBLIC:
	// wrong size prefix, truncated, trailing bytes or a non-canonical encoding.
	ErrMalformedPublic = errors.New("attest: malformed TPM2B_PUBLIC")
	// ErrUnsupportedKey means the public area is well formed but describes a
	// key this service does not accept (only RSA-2048 and ECC NIST P-256 with
	// nameAlg SHA-256 are accepted).
	ErrUnsupportedKey = errors.New("attest: unsupported TPM key")
)

// KeyError says which field of a TPM public area was rejected and why. It
// wraps ErrMalformedPublic or ErrUnsupportedKey.
type KeyError struct {
	// Field names the offending part of the structure, e.g. "size",
	// "nameAlg", "rsa.keyBits".
	Field string
	// Reason says what was wrong with it.
	Reason string
	// Err is ErrMalformedPublic or ErrUnsupportedKey, possibly wrapping a
	// lower-level cause.
	Err error
}

// Error implements error.
func (e *KeyError) Error() string {
	return fmt.Sprintf("%v: %s: %s", e.Err, e.Field, e.Reason)
}

// Unwrap returns the sentinel (and cause) for errors.Is / errors.As.
func (e *KeyError) Unwrap() error { return e.Err }

// tpmMalformed builds a *KeyError wrapping ErrMalformedPublic.
func tpmMalformed(field, format string, args ...any) error {
	return &KeyError{Field: field, Reason: fmt.Sprintf(format, args...), Err: ErrMalformedPublic}
}

// tpmUnsupported builds a *KeyError wrapping ErrUnsupportedKey.
func tpmUnsupported(field, format string, args ...any) error {
	return &KeyError{Field: field, Reason: fmt.Sprintf(format, args...), Err: ErrUnsupportedKey}
}

// tpmMaxPublicSize bounds the TPMT_PUBLIC we are willing to parse. An
// RSA-2048 EK with the TCG policy is about 310 bytes; anything much larger is
// not a key we accept (Part 2, 12.2.5: TPM2B_PUBLIC is bounded by
// sizeof(TPMT_PUBLIC)).
const tpmMaxPublicSize = 1024

// tpmReservedObjectAttributes are the TPMA_OBJECT bits reserved in every
// revision of Part 2 (8.3.2): 0, 3, 12-15 and 20-31.
const tpmReservedObjectAttributes = 1<<0 | 1<<3 | 0xf<<12 | 0xfff<<20

// tpmRSADefaultExponent is the exponent meant by an exponent field of 0
// (Part 2, 12.2.3.5 TPMS_RSA_PARMS: "zero indicates that the exponent is the
// default of 2^16 + 1").
const tpmRSADefaultExponent = 65537

// Public is a strictly parsed TPM2B_PUBLIC of an endorsement key or a storage
// root key (RSA-2048 or ECC NIST P-256, nameAlg SHA-256). It is immutable and
// safe for concurrent use.
type Public struct {
	raw  []byte
	name []byte
	key  crypto.PublicKey
	// pub is the unmarshalled TPMT_PUBLIC.
	pub *tpm2.TPMTPublic
	// kem is the labeled encapsulation key (Part 1, 24 "Secret Sharing")
	// built once here so that every activation blob does not rebuild it.
	kem tpm2.LabeledEncapsulationKey
	// kemErr records why the key cannot encapsulate (e.g. it is not a
	// restricted decryption key with an AES-CFB symmetric definition).
	kemErr error
	// ecdh is the ECDH form of an ECC key (nil for RSA), for the hand-written
	// ECC encapsulation (encapsulate, activation.go).
	ecdh *ecdh.PublicKey
}

// ParsePublic parses TPM2B_PUBLIC bytes (2-byte big-endian size, then
// TPMT_PUBLIC; Part 2, 12.2.5) strictly, as they arrive from a device:
//   - the size prefix must equal the length of the remaining bytes;
//   - the TPMT_PUBLIC must unmarshal and re-marshal to exactly the same bytes
//     (no trailing bytes, no non-canonical encoding), because its Name is the
//     hash of these bytes and a TPM computes it over its own encoding;
//   - the key must be RSA-2048 (exponent 0 or 65537) or ECC NIST P-256 with a
//     point on the curve, and nameAlg must be SHA-256.
//
// Every error is a *KeyError wrapping ErrMalformedPublic or ErrUnsupportedKey.
// The returned Public keeps its own copy of the bytes. The usual EK and SRK
// shapes are decoded by hand (tpmDecodeStandard, ~10x faster); every other
// input goes through go-tpm's decoder with the checks above, and tests hold
// the two to the same answers.
func ParsePublic(tpm2bPublic []byte) (*Public, error) {
	if len(tpm2bPublic) < 2 {
		return nil, tpmMalformed("size", "%d bytes, too short for the 2-byte size prefix", len(tpm2bPublic))
	}
	size := int(binary.BigEndian.Uint16(tpm2bPublic))
	body := tpm2bPublic[2:]
	if size != len(body) {
		return nil, tpmMalformed("size", "size prefix says %d bytes, %d follow", size, len(body))
	}
	if size == 0 {
		return nil, tpmMalformed("size", "empty public area")
	}
	if size > tpmMaxPublicSize {
		return nil, tpmMalformed("size", "%d bytes, more than the %d accepted", size, tpmMaxPublicSize)
	}
	// The fast decoder accepts only the exact encodings EK and SRK
	// templates produce; anything else (including every malformed or
	// unsupported key) takes the strict go-tpm path below, which gives the
	// precise error. Tests check that the fast path never accepts what the
	// strict path rejects, and that both give the same key.
	// The decoded structure aliases raw, the Public's own copy.
	raw := make([]byte, len(tpm2bPublic))
	copy(raw, tpm2bPublic)
	if pub, ok := tpmDecodeStandard(raw[2:]); ok {
		if p, err := tpmNewPublic(raw, pub); err == nil && p.kemErr == nil {
			return p, nil
		}
	}
	pub, err := tpmDecodeStrict(raw[2:])
	if err != nil {
		return nil, err
	}
	return tpmNewPublic(raw, pub)
}

// tpmDecodeStrict unmarshals a TPMT_PUBLIC with go-tpm's reflection-based
// decoder and checks that it is canonical and that its reserved attribute bits
// are clear; then only nameAlg and type are checked. It accepts every shape
// go-tpm knows and is the reference the fast decoder is tested against.
func tpmDecodeStrict(body []byte) (*tpm2.TPMTPublic, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](body)
	if err != nil {
		return nil, &KeyError{Field: "TPMT_PUBLIC", Reason: err.Error(), Err: fmt.Errorf("%w: %w", ErrMalformedPublic, err)}
	}
	// go-tpm's Unmarshal ignores trailing bytes and accepts some
	// non-canonical encodings (e.g. reserved attribute bits, which it drops):
	// the TPM's canonical form is what it re-marshals to.
	if again := tpm2.Marshal(*pub); string(again) != string(body) {
		return nil, tpmMalformed("TPMT_PUBLIC", "not canonical: %d bytes re-encode to %d different bytes (trailing or reserved data)", len(body), len(again))
	}
	// Part 2, 8.3.2 TPMA_OBJECT: reserved bits shall be clear (a TPM
	// answers TPM_RC_RESERVED_BITS); go-tpm keeps them, so check the wire.
	// TPMT_PUBLIC starts type (2 bytes), nameAlg (2), objectAttributes (4).
	if attrs := binary.BigEndian.Uint32(body[4:8]); attrs&tpmReservedObjectAttributes != 0 {
		return nil, tpmMalformed("objectAttributes", "reserved bits 0x%08x are set", attrs&tpmReservedObjectAttributes)
	}
	// Part 2, 12.2.4 TPMT_PUBLIC nameAlg; we accept SHA-256 only.
	if pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, tpmUnsupported("nameAlg", "0x%04x, only SHA-256 (0x000b) is accepted", uint16(pub.NameAlg))
	}
	if pub.Type != tpm2.TPMAlgRSA && pub.Type != tpm2.TPMAlgECC {
		return nil, tpmUnsupported("type", "0x%04x, only RSA (0x0001) and ECC (0x0023) keys are accepted", uint16(pub.Type))
	}
	return pub, nil
}

// tpmStandardAttributes are the TPMA_OBJECT bits (Part 2, 8.3.2) the fast
// decoder lets through: fixedTPM (1), stClear (2), fixedParent (4),
// sensitiveDataOrigin (5), userWithAuth (6), adminWithPolicy (7), noDA (10),
// encryptedDuplication (11), restricted (16) and decrypt (17). Any other bit,
// reserved or not (firmwareLimited, sign, x509sign), sends the key to the
// strict decoder.
const tpmStandardAttributes = 1<<1 | 1<<2 | 1<<4 | 1<<5 | 1<<6 | 1<<7 | 1<<10 | 1<<11 | 1<<16 | 1<<17

// tpmRestrictedDecrypt are the TPMA_OBJECT bits restricted (16) and decrypt
// (17) that every storage key and endorsement key has (Part 1, 23 and 24).
const tpmRestrictedDecrypt = 1<<16 | 1<<17

// tpmMaxPolicySize is the largest authPolicy the fast decoder accepts: a
// TPM2B_DIGEST holds at most sizeof(TPMU_HA), 64 bytes (Part 2, 10.4.2).
const tpmMaxPolicySize = 64

// tpmWire reads big-endian fields from a TPM structure (Part 1, 18
// "Structure Marshaling": integers are big-endian, TPM2B are a 2-byte size
// then that many bytes). Any read past the end sets bad.
type tpmWire struct {
	b   []byte
	bad bool
}

// u16 reads a UINT16.
func (w *tpmWire) u16() uint16 {
	if len(w.b) < 2 {
		w.bad = true
		return 0
	}
	v := binary.BigEndian.Uint16(w.b)
	w.b = w.b[2:]
	return v
}

// u32 reads a UINT32.
func (w *tpmWire) u32() uint32 {
	if len(w.b) < 4 {
		w.bad = true
		return 0
	}
	v := binary.BigEndian.Uint32(w.b)
	w.b = w.b[4:]
	return v
}

// tpm2b reads a TPM2B and returns its buffer (aliasing the input), which
// must be between minSize and maxSize bytes long.
func (w *tpmWire) tpm2b(minSize, maxSize int) []byte {
	n := int(w.u16())
	if w.bad || n < minSize || n > maxSize || len(w.b) < n {
		w.bad = true
		return nil
	}
	v := w.b[:n:n]
	w.b = w.b[n:]
	return v
}

// tpmDecodeStandard decodes, without reflection, a TPMT_PUBLIC of exactly
// the shape EK and SRK templates give (TCG EK Credential Profile, templates
// L-1, L-2, H-1, H-2; TCG TPM v2.0 Provisioning Guidance, 7.5.1 SRK
// templates): an RSA-2048 or ECC NIST P-256 restricted decryption key with
// nameAlg SHA-256, symmetric AES-128 or AES-256 in CFB mode and a NULL
// scheme (and NULL KDF). It reports false for anything else, including every
// encoding the strict decoder would reject, so that the caller falls back to
// tpmDecodeStrict; it never returns an error of its own.
//
// The layout (Part 2, 12.2.4 TPMT_PUBLIC):
//
//	type             TPMI_ALG_PUBLIC   UINT16 (RSA 0x0001 or ECC 0x0023)
//	nameAlg          TPMI_ALG_HASH     UINT16 (SHA-256 0x000b)
//	objectAttributes TPMA_OBJECT       UINT32 (8.3.2)
//	authPolicy       TPM2B_DIGEST      (10.4.2)
//	parameters       TPMU_PUBLIC_PARMS (12.2.3.7), for RSA TPMS_RSA_PARMS
//	                 (12.2.3.5): symmetric TPMT_SYM_DEF_OBJECT (11.1.7),
//	                 scheme TPMT_RSA_SCHEME (11.2.4.2), keyBits UINT16,
//	                 exponent UINT32; for ECC TPMS_ECC_PARMS (12.2.3.6):
//	                 symmetric, scheme TPMT_ECC_SCHEME (11.2.5.6), curveID
//	                 UINT16 (11.2.5.5), kdf TPMT_KDF_SCHEME (11.2.3.3)
//	unique           TPMU_PUBLIC_ID (12.2.3.2): TPM2B_PUBLIC_KEY_RSA
//	                 (11.2.4.5) or TPMS_ECC_POINT (11.2.5.2), two
//	                 TPM2B_ECC_PARAMETER (11.2.5.1)
//
// A TPMT_SYM_DEF_OBJECT with algorithm AES is algorithm, keyBits (UINT16),
// mode (UINT16); its details union is empty for AES (11.1.6). A scheme of
// TPM_ALG_NULL has no details (11.2.3.7, 11.2.4.2). Nothing may follow unique.
func tpmDecodeStandard(body []byte) (*tpm2.TPMTPublic, bool) {
	w := tpmWire{b: body}
	typ := tpm2.TPMAlgID(w.u16())
	nameAlg := tpm2.TPMAlgID(w.u16())
	attrs := w.u32()
	if w.bad || (typ != tpm2.TPMAlgRSA && typ != tpm2.TPMAlgECC) || nameAlg != tpm2.TPMAlgSHA256 {
		return nil, false
	}
	// Part 2, 8.3.2: reserved bits shall be clear; the standard set is a
	// subset of the defined bits, so this also rejects every reserved bit.
	if attrs&tpmReservedObjectAttributes != 0 || attrs&^tpmStandardAttributes != 0 || attrs&tpmRestrictedDecrypt != tpmRestrictedDecrypt {
		return nil, false
	}
	policy := w.tpm2b(0, tpmMaxPolicySize)
	// TPMT_SYM_DEF_OBJECT: a restricted decryption key has a block cipher
	// here (Part 2, 12.2.3.5 and 12.2.3.6); we take AES-CFB only.
	symAlg := tpm2.TPMAlgID(w.u16())
	symBits := tpm2.TPMKeyBits(w.u16())
	symMode := tpm2.TPMAlgID(w.u16())
	// TPMT_RSA_SCHEME / TPMT_ECC_SCHEME: TPM_ALG_NULL for a restricted
	// decryption key.
	scheme := tpm2.TPMAlgID(w.u16())
	if w.bad || symAlg != tpm2.TPMAlgAES || (symBits != 128 && symBits != 256) || symMode != tpm2.TPMAlgCFB || scheme != tpm2.TPMAlgNull {
		return nil, false
	}
	pub := &tpm2.TPMTPublic{
		Type:    typ,
		NameAlg: nameAlg,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:             attrs&(1<<1) != 0,
			STClear:              attrs&(1<<2) != 0,
			FixedParent:          attrs&(1<<4) != 0,
			SensitiveDataOrigin:  attrs&(1<<5) != 0,
			UserWithAuth:         attrs&(1<<6) != 0,
			AdminWithPolicy:      attrs&(1<<7) != 0,
			NoDA:                 attrs&(1<<10) != 0,
			EncryptedDuplication: attrs&(1<<11) != 0,
			Restricted:           true,
			Decrypt:              true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
	}
	sym := tpm2.TPMTSymDefObject{
		Algorithm: tpm2.TPMAlgAES,
		KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, symBits),
		Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, symMode),
	}
	switch typ {
	case tpm2.TPMAlgRSA:
		keyBits := w.u16()
		exponent := w.u32()
		modulus := w.tpm2b(256, 256)
		if w.bad || keyBits != 2048 || (exponent != 0 && exponent != tpmRSADefaultExponent) {
			return nil, false
		}
		pub.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: sym,
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
			KeyBits:   tpm2.TPMIRSAKeyBits(keyBits),
			Exponent:  exponent,
		})
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: modulus})
	case tpm2.TPMAlgECC:
		curve := tpm2.TPMECCCurve(w.u16())
		kdf := tpm2.TPMAlgID(w.u16())
		x := w.tpm2b(32, 32)
		y := w.tpm2b(32, 32)
		if w.bad || curve != tpm2.TPMECCNistP256 || kdf != tpm2.TPMAlgNull {
			return nil, false
		}
		pub.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: sym,
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID:   curve,
			KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		})
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: x},
			Y: tpm2.TPM2BECCParameter{Buffer: y},
		})
	}
	// Part 2, 12.2.5: the TPMT_PUBLIC fills the TPM2B exactly.
	if len(w.b) != 0 {
		return nil, false
	}
	return pub, true
}

// tpmNewPublic checks the key of a decoded TPMT_PUBLIC (size, exponent,
// curve, point) and builds the Public with its Name and encapsulation key.
// raw is the TPM2B_PUBLIC the Public keeps (pub may alias it).
func tpmNewPublic(raw []byte, pub *tpm2.TPMTPublic) (*Public, error) {
	var key crypto.PublicKey
	var err error
	switch pub.Type {
	case tpm2.TPMAlgRSA:
		key, err = tpmRSAKey(pub)
	case tpm2.TPMAlgECC:
		key, err = tpmECCKey(pub)
	default:
		return nil, tpmUnsupported("type", "0x%04x, only RSA (0x0001) and ECC (0x0023) keys are accepted", uint16(pub.Type))
	}
	if err != nil {
		return nil, err
	}
	// Part 1, 16 "Names": Name = nameAlg || H_nameAlg(TPMT_PUBLIC).
	sum := sha256.Sum256(raw[2:])
	name := make([]byte, 0, 2+sha256.Size)
	name = binary.BigEndian.AppendUint16(name, uint16(tpm2.TPMAlgSHA256))
	name = append(name, sum[:]...)
	p := &Public{raw: raw, name: name, key: key, pub: pub}
	p.kem, p.kemErr = tpmEncapsulationKey(pub)
	if k, ok := key.(*ecdsa.PublicKey); ok && p.kemErr == nil {
		if p.ecdh, err = k.ECDH(); err != nil {
			p.kemErr = tpmUnsupported("key", "no ECDH form: %v", err)
		}
	}
	return p, nil
}

// tpmRSAKey checks an RSA public area (Part 2, 12.2.3.5 TPMS_RSA_PARMS and
// 11.2.4.5 TPM2B_PUBLIC_KEY_RSA) and returns its key.
func tpmRSAKey(pub *tpm2.TPMTPublic) (*rsa.PublicKey, error) {
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		return nil, tpmMalformed("parameters", "%v", err)
	}
	if parms.KeyBits != 2048 {
		return nil, tpmUnsupported("rsa.keyBits", "%d, only 2048 is accepted", parms.KeyBits)
	}
	exp := int(parms.Exponent)
	if exp == 0 {
		exp = tpmRSADefaultExponent
	}
	if exp != tpmRSADefaultExponent {
		return nil, tpmUnsupported("rsa.exponent", "%d, only 65537 is accepted", parms.Exponent)
	}
	unique, err := pub.Unique.RSA()
	if err != nil {
		return nil, tpmMalformed("unique", "%v", err)
	}
	if len(unique.Buffer) != 256 {
		return nil, tpmUnsupported("rsa.unique", "modulus of %d bytes, want 256", len(unique.Buffer))
	}
	n := new(big.Int).SetBytes(unique.Buffer)
	if n.BitLen() != 2048 || n.Bit(0) == 0 {
		return nil, tpmUnsupported("rsa.unique", "modulus is not an odd 2048-bit number")
	}
	return &rsa.PublicKey{N: n, E: exp}, nil
}

// tpmECCKey checks an ECC public area (Part 2, 12.2.3.6 TPMS_ECC_PARMS and
// 11.2.5.2 TPMS_ECC_POINT) and returns its key.
func tpmECCKey(pub *tpm2.TPMTPublic) (*ecdsa.PublicKey, error) {
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, tpmMalformed("parameters", "%v", err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 {
		return nil, tpmUnsupported("ecc.curveID", "0x%04x, only NIST P-256 (0x0003) is accepted", uint16(parms.CurveID))
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return nil, tpmMalformed("unique", "%v", err)
	}
	// A TPM writes both coordinates at the full curve size (Part 1, C.8
	// "ECC Point Padding"); a shorter coordinate is not what a TPM sends.
	if len(point.X.Buffer) != 32 || len(point.Y.Buffer) != 32 {
		return nil, tpmUnsupported("ecc.unique", "coordinates of %d and %d bytes, want 32", len(point.X.Buffer), len(point.Y.Buffer))
	}
	uncompressed := make([]byte, 0, 65)
	uncompressed = append(uncompressed, 4)
	uncompressed = append(uncompressed, point.X.Buffer...)
	uncompressed = append(uncompressed, point.Y.Buffer...)
	key, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), uncompressed)
	if err != nil {
		return nil, tpmUnsupported("ecc.unique", "not a point on P-256: %v", err)
	}
	return key, nil
}

// tpmEncapsulationKey checks that pub can protect secrets sent to it (a
// restricted decryption key with an AES-CFB symmetric definition; Part 1,
// 24 "Credential Protection" and 23 "Protected Storage") and returns it as
// go-tpm's labeled encapsulation key.
func tpmEncapsulationKey(pub *tpm2.TPMTPublic) (tpm2.LabeledEncapsulationKey, error) {
	attrs := pub.ObjectAttributes
	if !attrs.Restricted || !attrs.Decrypt || attrs.SignEncrypt {
		return nil, tpmUnsupported("objectAttributes", "not a restricted decryption key (restricted=%v decrypt=%v sign=%v)",
			attrs.Restricted, attrs.Decrypt, attrs.SignEncrypt)
	}
	var sym *tpm2.TPMTSymDefObject
	switch pub.Type {
	case tpm2.TPMAlgRSA:
		parms, err := pub.Parameters.RSADetail()
		if err != nil {
			return nil, tpmMalformed("parameters", "%v", err)
		}
		sym = &parms.Symmetric
	case tpm2.TPMAlgECC:
		parms, err := pub.Parameters.ECCDetail()
		if err != nil {
			return nil, tpmMalformed("parameters", "%v", err)
		}
		sym = &parms.Symmetric
	}
	if sym == nil || sym.Algorithm != tpm2.TPMAlgAES {
		return nil, tpmUnsupported("symmetric", "not AES")
	}
	mode, err := sym.Mode.AES()
	if err != nil || *mode != tpm2.TPMAlgCFB {
		return nil, tpmUnsupported("symmetric.mode", "not CFB")
	}
	bits, err := sym.KeyBits.AES()
	if err != nil || (*bits != 128 && *bits != 256) {
		return nil, tpmUnsupported("symmetric.keyBits", "not 128 or 256")
	}
	kem, err := tpm2.ImportEncapsulationKey(pub)
	if err != nil {
		return nil, tpmUnsupported("key", "%v", err)
	}
	return kem, nil
}

// Bytes returns the TPM2B_PUBLIC bytes exactly as parsed. The caller must not
// modify them.
func (p *Public) Bytes() []byte { return p.raw }

// Name returns the TPM Name: nameAlg (2 bytes) || SHA-256(TPMT_PUBLIC)
// (Part 1, 16). The caller must not modify it.
func (p *Public) Name() []byte { return p.name }

// PublicKey returns the *rsa.PublicKey or *ecdsa.PublicKey.
func (p *Public) PublicKey() crypto.PublicKey { return p.key }

// Type returns the TPM algorithm of the key: tpm2.TPMAlgRSA or tpm2.TPMAlgECC.
func (p *Public) Type() tpm2.TPMAlgID { return p.pub.Type }

// String describes the key briefly, e.g. "RSA-2048" or "ECC-P256", for logs.
func (p *Public) String() string {
	if p == nil {
		return "<nil>"
	}
	if p.pub.Type == tpm2.TPMAlgRSA {
		return "RSA-2048"
	}
	return "ECC-P256"
}

// Equal reports whether two keys are the same public key (modulus and
// exponent, or curve and point), whatever their encodings: an EK enrolled
// with exponent 0 equals the same EK sent with exponent 65537, and two
// different policies or attributes do not make two keys different.
func (p *Public) Equal(o *Public) bool {
	if p == nil || o == nil {
		return false
	}
	switch k := p.key.(type) {
	case *rsa.PublicKey:
		return k.Equal(o.key)
	case *ecdsa.PublicKey:
		return k.Equal(o.key)
	}
	return false
}
