package provision

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// A registration record keeps a hash of the attestation it was issued for
// (store.Registration.AttestationHash), and the TPM hub key it holds is
// handed on to the next registration only when that registration attests
// with the same thing: a replacement TPM on the same enrollment (its EK
// changed by PUT), or a device that now attests another way, gets a new
// key, never the retired device's. What is hashed:
//
//   - TPM: the EK's public key as attest.Public.Equal compares it (RSA
//     modulus and exponent, or curve and point), so that two encodings of
//     one key (an exponent of 0 or 65537) are the same attestation;
//   - symmetric key: the key that verified the SAS (for a group, the device
//     key derived from the group key): a hash of it, never the key;
//   - X.509: the device certificate and, through a group, the signing
//     certificate the chain verified to.
//
// A record without a hash (written before they were recorded) is treated
// as issued for another attestation: its hub key is replaced once, at the
// device's next registration, which also delivers the new key.

// attestationHashLabel domain-separates the hashes of registration records.
const attestationHashLabel = "dpsd registration attestation v1"

// attestationHash hashes kind and parts, each part length-prefixed.
func attestationHash(kind string, parts ...[]byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(attestationHashLabel))
	h.Write([]byte{0})
	h.Write([]byte(kind))
	for _, p := range parts {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// symmetricKeyHash is the attestation hash of a symmetric device key.
func symmetricKeyHash(deviceKey []byte) [sha256.Size]byte {
	return attestationHash(store.AttestationSymmetricKey, deviceKey)
}

// recordAttestationHash returns the attestation hash of a registration by
// id (ek: the EK a TPM device registered with), or nil when it is unknown
// (a symmetric-key identity built without one).
func recordAttestationHash(id Identity, ek *attest.Public) ([]byte, error) {
	switch id.Method {
	case AuthTPM:
		if ek == nil {
			return nil, fmt.Errorf("TPM registration without an EK")
		}
		var h [sha256.Size]byte
		switch k := ek.PublicKey().(type) {
		case *rsa.PublicKey:
			var e [8]byte
			binary.BigEndian.PutUint64(e[:], uint64(k.E))
			h = attestationHash(store.AttestationTPM, []byte("rsa"), k.N.Bytes(), e[:])
		case *ecdsa.PublicKey:
			point, err := k.Bytes()
			if err != nil {
				return nil, fmt.Errorf("encode the EK's public key: %w", err)
			}
			h = attestationHash(store.AttestationTPM, []byte("ecc"), []byte(k.Curve.Params().Name), point)
		default:
			return nil, fmt.Errorf("EK of type %T", k)
		}
		return h[:], nil
	case AuthSymmetricKey:
		if id.keyHash == ([sha256.Size]byte{}) {
			return nil, nil
		}
		return id.keyHash[:], nil
	case AuthX509:
		if id.Certificate == nil {
			return nil, nil
		}
		var h [sha256.Size]byte
		if id.SigningCertificate != nil {
			h = attestationHash(store.AttestationX509, id.Certificate.Raw, id.SigningCertificate.Raw)
		} else {
			h = attestationHash(store.AttestationX509, id.Certificate.Raw)
		}
		return h[:], nil
	}
	return nil, nil
}
