package devtpm

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// NV indices where a TPM manufacturer stores the EK certificate of the
// default EK templates (TCG EK Credential Profile for TPM Family 2.0,
// section 2.2.1.4, the "low range" of templates L-1 and L-2).
const (
	// EKCertIndexRSA2048 holds the certificate of the RSA-2048 EK (template L-1).
	EKCertIndexRSA2048 tpm2.TPMHandle = 0x01c00002
	// EKCertIndexECCP256 holds the certificate of the ECC NIST P-256 EK (template L-2).
	EKCertIndexECCP256 tpm2.TPMHandle = 0x01c0000a
)

// EKCertIndex returns the NV index of alg's EK certificate.
func EKCertIndex(alg Alg) (tpm2.TPMHandle, error) {
	switch alg {
	case RSA2048:
		return EKCertIndexRSA2048, nil
	case ECCP256:
		return EKCertIndexECCP256, nil
	}
	return 0, fmt.Errorf("%w: %v", ErrUnknownTemplate, alg)
}

// AlgOf returns the EK algorithm of a key's TPM2B_PUBLIC: RSA2048 for RSA,
// ECCP256 for ECC.
func AlgOf(tpm2bPublic []byte) (Alg, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](tpm2bPublic)
	if err != nil {
		return 0, fmt.Errorf("devtpm: key public: %w", err)
	}
	c, err := pub.Contents()
	if err != nil {
		return 0, fmt.Errorf("devtpm: key public: %w", err)
	}
	switch c.Type {
	case tpm2.TPMAlgRSA:
		return RSA2048, nil
	case tpm2.TPMAlgECC:
		return ECCP256, nil
	}
	return 0, fmt.Errorf("%w: key type 0x%04x", ErrUnknownTemplate, uint16(c.Type))
}

// defaultNVBufferMax is the chunk size when the TPM does not report
// TPM_PT_NV_BUFFER_MAX (every TPM 2.0 accepts at least this much).
const defaultNVBufferMax = 512

// ReadEKCertificate returns the contents of the NV index where the
// manufacturer stored the EK certificate of alg's default EK, as stored
// (DER, perhaps with a TCG header or padding; attest.ParseEKCertificate
// reads either), or nil and no error when the TPM has none (TPM2_NV_ReadPublic
// answers TPM_RC_HANDLE: firmware TPMs often keep theirs elsewhere).
//
// It reads TPM2_NV_ReadPublic for the size, then TPM2_NV_Read in chunks of
// TPM_PT_NV_BUFFER_MAX, authorizing with the index itself (empty
// password; the profile sets TPMA_NV_AUTHREAD) and, if the TPM refuses
// that, with the owner hierarchy (empty password).
func ReadEKCertificate(tpm transport.TPM, alg Alg) ([]byte, error) {
	index, err := EKCertIndex(alg)
	if err != nil {
		return nil, err
	}
	return ReadNV(tpm, index)
}

// ReadNV reads a whole NV index as ReadEKCertificate does: nil and no error
// when the index does not exist.
func ReadNV(tpm transport.TPM, index tpm2.TPMHandle) ([]byte, error) {
	pub, err := tpm2.NVReadPublic{NVIndex: index}.Execute(tpm)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, nil
	}
	if err != nil {
		return nil, tpmCmdErr("TPM2_NV_ReadPublic", fmt.Errorf("0x%08x: %w", uint32(index), err))
	}
	nv, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, tpmCmdErr("TPM2_NV_ReadPublic", fmt.Errorf("0x%08x: %w", uint32(index), err))
	}
	size := int(nv.DataSize)
	chunk := nvBufferMax(tpm)
	named := tpm2.NamedHandle{Handle: index, Name: pub.NVName}
	var lastErr error
	for _, auth := range []tpm2.AuthHandle{
		{Handle: index, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)},
		{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
	} {
		out := make([]byte, 0, size)
		for len(out) < size {
			n := min(chunk, size-len(out))
			rsp, err := tpm2.NVRead{AuthHandle: auth, NVIndex: named, Size: uint16(n), Offset: uint16(len(out))}.Execute(tpm)
			if err != nil {
				lastErr = tpmCmdErr("TPM2_NV_Read", fmt.Errorf("0x%08x at %d: %w", uint32(index), len(out), err))
				break
			}
			if len(rsp.Data.Buffer) == 0 {
				lastErr = tpmCmdErr("TPM2_NV_Read", fmt.Errorf("0x%08x at %d: no data", uint32(index), len(out)))
				break
			}
			out = append(out, rsp.Data.Buffer...)
		}
		if len(out) >= size {
			return out[:size], nil
		}
	}
	return nil, lastErr
}

// nvBufferMax returns TPM_PT_NV_BUFFER_MAX, or defaultNVBufferMax when the
// TPM does not say.
func nvBufferMax(tpm transport.TPM) int {
	rsp, err := tpm2.GetCapability{
		Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTNVBufferMax), PropertyCount: 1,
	}.Execute(tpm)
	if err != nil {
		return defaultNVBufferMax
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil || len(props.TPMProperty) == 0 || props.TPMProperty[0].Property != tpm2.TPMPTNVBufferMax ||
		props.TPMProperty[0].Value == 0 {
		return defaultNVBufferMax
	}
	return int(min(props.TPMProperty[0].Value, 4096))
}
