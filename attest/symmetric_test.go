package attest

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

// The example of Microsoft's "How to provision legacy devices using symmetric
// keys" (azure-docs, articles/iot-dps/how-to-legacy-device-symm-key.md,
// "Derive a device key"): the group key and registration id below give the
// derived key Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=. Re-checked here
// with
//
//	echo -n sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6 | openssl sha256 -mac HMAC \
//	  -macopt hexkey:$(echo $KEY | base64 -d | xxd -p -c 1000) -binary | base64
const (
	symTestGroupKey = "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw=="
	symTestRegID    = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"
	symTestDevKey   = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
)

func TestDeriveDeviceKeyAzureDocsVector(t *testing.T) {
	got, err := DeriveDeviceKeyBase64(symTestGroupKey, symTestRegID)
	if err != nil {
		t.Fatal(err)
	}
	if got != symTestDevKey {
		t.Errorf("DeriveDeviceKeyBase64 = %s, want %s", got, symTestDevKey)
	}
	group, err := DecodeSymmetricKey(symTestGroupKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(group) != 64 {
		t.Fatalf("group key is %d bytes, want 64", len(group))
	}
	raw := DeriveDeviceKey(group, symTestRegID)
	want, _ := base64.StdEncoding.DecodeString(symTestDevKey)
	if !bytes.Equal(raw, want) {
		t.Errorf("DeriveDeviceKey = %x, want %x", raw, want)
	}
}

func TestDeriveDeviceKeyOpenSSLVector(t *testing.T) {
	// Computed once with OpenSSL 3.0.19:
	//   printf 'Dev:01' | openssl dgst -sha256 -mac HMAC \
	//     -macopt hexkey:000102030405060708090a0b0c0d0e0f
	const want = "8de4ad2ad306195fc2853d5de4f090f5d8fd36fbc6c02e44cbea94b545fc4094"
	if got := hex.EncodeToString(DeriveDeviceKey(sasTestKey16(), "Dev:01")); got != want {
		t.Errorf("DeriveDeviceKey = %s, want %s", got, want)
	}
}

func TestDeriveDeviceKeyUsesIDAsSpelled(t *testing.T) {
	group, err := DecodeSymmetricKey(symTestGroupKey)
	if err != nil {
		t.Fatal(err)
	}
	lower := DeriveDeviceKey(group, "dev-01")
	upper := DeriveDeviceKey(group, "Dev-01")
	if bytes.Equal(lower, upper) {
		t.Error("derivation ignores case; it must use the id as the device spells it")
	}
	if len(lower) != 32 {
		t.Errorf("derived key is %d bytes, want 32", len(lower))
	}
	// The derived key signs a token the broker verifies against the
	// lowercased stored resource.
	tok, err := ParseSASToken(SignSAS(upper, "s/registrations/Dev-01", sasTestTime(3600), ""))
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Verify(DeriveDeviceKey(group, "Dev-01"), "s/registrations/dev-01", sasTestTime(0), SASPolicy{}); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if err := tok.Verify(DeriveDeviceKey(group, "dev-01"), "s/registrations/dev-01", sasTestTime(0), SASPolicy{}); !errors.Is(err, ErrSASSignature) {
		t.Errorf("Verify with the key of the lowercased id = %v, want ErrSASSignature", err)
	}
}

func TestDecodeSymmetricKey(t *testing.T) {
	for _, n := range []int{16, 32, 64} {
		k := bytes.Repeat([]byte{0xa5}, n)
		got, err := DecodeSymmetricKey(base64.StdEncoding.EncodeToString(k))
		if err != nil || !bytes.Equal(got, k) {
			t.Errorf("%d bytes: %x, %v", n, got, err)
		}
	}
	bad := map[string]string{
		"empty":         "",
		"15 bytes":      base64.StdEncoding.EncodeToString(make([]byte, 15)),
		"65 bytes":      base64.StdEncoding.EncodeToString(make([]byte, 65)),
		"1000 bytes":    base64.StdEncoding.EncodeToString(make([]byte, 1000)),
		"unpadded":      base64.RawStdEncoding.EncodeToString(make([]byte, 32)),
		"url alphabet":  strings.ReplaceAll(strings.ReplaceAll(symTestGroupKey, "/", "_"), "+", "-"),
		"not base64":    "this is not base64 at all!!",
		"trailing LF":   symTestDevKey + "\n",
		"inner CRLF":    symTestDevKey[:10] + "\r\n" + symTestDevKey[10:],
		"non-canonical": nonCanonical(symTestDevKey),
		"inner space":   symTestDevKey[:10] + " " + symTestDevKey[10:],
		"bad character": "zz!" + strings.Repeat("0", 41),
	}
	for name, in := range bad {
		t.Run(name, func(t *testing.T) {
			k, err := DecodeSymmetricKey(in)
			if !errors.Is(err, ErrInvalidSymmetricKey) {
				t.Fatalf("DecodeSymmetricKey = %x, %v; want ErrInvalidSymmetricKey", k, err)
			}
			if len(in) >= 8 && strings.Contains(err.Error(), in[:8]) {
				t.Errorf("error %q repeats the key", err)
			}
		})
	}
	if _, err := DeriveDeviceKeyBase64("short", "dev"); !errors.Is(err, ErrInvalidSymmetricKey) {
		t.Errorf("DeriveDeviceKeyBase64 with a bad group key = %v", err)
	}
}

// sasTestTime returns the test clock (sasTestNow) plus offset seconds.
func sasTestTime(offset int64) time.Time {
	return time.Unix(sasTestNow+offset, 0)
}

// nonCanonical returns the padded base64 text k with one of the unused
// trailing bits of its last data character set: the lenient decoder reads
// the same bytes from it, the strict one refuses it.
func nonCanonical(k string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	data := strings.TrimRight(k, "=")
	i := len(data) - 1
	return data[:i] + string(alphabet[strings.IndexByte(alphabet, data[i])|1]) + k[len(data):]
}
