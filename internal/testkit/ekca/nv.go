package ekca

import (
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// nvChunk is the NV write chunk: TPM_PT_NV_BUFFER_MAX of the reference
// simulator and swtpm is 1024.
const nvChunk = 1024

// InjectNV writes data into NV index as a manufacturer stores an EK
// certificate: defined with platform authorization (empty password) and the
// attributes swtpm_setup gives its certificate indices (PPWRITE,
// WRITEDEFINE, PPREAD, OWNERREAD, AUTHREAD, NO_DA, PLATFORMCREATE), any
// index already there being removed first. The reference simulator has no
// EK certificate and forgets its NV at every open: call this after each
// open.
func InjectNV(t testing.TB, tpm transport.TPM, index tpm2.TPMHandle, data []byte) {
	t.Helper()
	platform := tpm2.AuthHandle{Handle: tpm2.TPMRHPlatform, Auth: tpm2.PasswordAuth(nil)}
	RemoveNV(t, tpm, index)
	_, err := tpm2.NVDefineSpace{
		AuthHandle: platform,
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex: index, NameAlg: tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{PPWrite: true, WriteDefine: true, PPRead: true, OwnerRead: true,
				AuthRead: true, NoDA: true, PlatformCreate: true},
			DataSize: uint16(len(data)),
		}),
	}.Execute(tpm)
	if err != nil {
		t.Fatalf("ekca: NV_DefineSpace 0x%08x: %v", uint32(index), err)
	}
	pub, err := tpm2.NVReadPublic{NVIndex: index}.Execute(tpm)
	if err != nil {
		t.Fatalf("ekca: NV_ReadPublic 0x%08x: %v", uint32(index), err)
	}
	for off := 0; off < len(data); off += nvChunk {
		end := min(off+nvChunk, len(data))
		_, err := tpm2.NVWrite{
			AuthHandle: platform,
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: pub.NVName},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]},
			Offset:     uint16(off),
		}.Execute(tpm)
		if err != nil {
			t.Fatalf("ekca: NV_Write 0x%08x at %d: %v", uint32(index), off, err)
		}
	}
}

// RemoveNV removes NV index (platform authorization) if it exists.
func RemoveNV(t testing.TB, tpm transport.TPM, index tpm2.TPMHandle) {
	t.Helper()
	pub, err := tpm2.NVReadPublic{NVIndex: index}.Execute(tpm)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return
	}
	if err != nil {
		t.Fatalf("ekca: NV_ReadPublic 0x%08x: %v", uint32(index), err)
	}
	_, err = tpm2.NVUndefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHPlatform, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    tpm2.NamedHandle{Handle: index, Name: pub.NVName},
	}.Execute(tpm)
	if err != nil {
		t.Fatalf("ekca: NV_UndefineSpace 0x%08x: %v", uint32(index), err)
	}
}
