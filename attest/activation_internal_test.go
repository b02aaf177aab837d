package attest

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// TestIdentityKeyEncodingMatchesGoTPM checks the hand-written identity key
// encodings byte for byte against go-tpm's reflection marshalling of the
// same structures.
func TestIdentityKeyEncodingMatchesGoTPM(t *testing.T) {
	for _, keyLen := range []int{MinHMACKeySize, 32, MaxHMACKeySize} {
		unique, seed, key := make([]byte, 32), make([]byte, 32), make([]byte, keyLen)
		for _, b := range [][]byte{unique, seed, key} {
			if _, err := rand.Read(b); err != nil {
				t.Fatal(err)
			}
		}
		wantPub := tpm2.Marshal(tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgKeyedHash,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{SignEncrypt: true, NoDA: true, UserWithAuth: true},
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
				Scheme: tpm2.TPMTKeyedHashScheme{
					Scheme:  tpm2.TPMAlgHMAC,
					Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256}),
				},
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: unique}),
		})
		if got := tpmIdentityPublic(unique); !bytes.Equal(got, wantPub) {
			t.Errorf("public\n got %x\nwant %x", got, wantPub)
		}
		wantSens := tpm2.Marshal(tpm2.TPMTSensitive{
			SensitiveType: tpm2.TPMAlgKeyedHash,
			SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
			Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: key}),
		})
		if got := tpmIdentitySensitive(seed, key); !bytes.Equal(got, wantSens) {
			t.Errorf("sensitive\n got %x\nwant %x", got, wantSens)
		}
	}
	// objectAttributes 0x00040440 is what the spec recipe asks for.
	if attrs := tpm2.Marshal(tpm2.TPMAObject{SignEncrypt: true, NoDA: true, UserWithAuth: true}); !bytes.Equal(attrs, []byte{0, 4, 4, 0x40}) {
		t.Errorf("attributes %x", attrs)
	}
}
