package attest

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Known-answer vectors. The device key is the derived key of the Azure docs
// example (see symmetric_test.go): base64 Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=,
// hex 26c9b49721a98da55854fda0dc59e69e61bd748ffda94db8c0da3291499eae67.
// Every signature below was computed once, outside this code, with OpenSSL
// 3.0.19, e.g.
//
//	printf '%s\n1700003600' '0ne00000A0A%2Fregistrations%2Fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6' |
//	  openssl dgst -sha256 -mac HMAC -macopt hexkey:26c9b4...ae67 -binary | base64
//
// and the tokens were then written by hand in the shape each client sends.
const (
	sasTestScope    = "0ne00000A0A"
	sasTestRegID    = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"
	sasTestResource = sasTestScope + "/registrations/" + sasTestRegID
	sasTestKeyB64   = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
	sasTestNow      = 1700000000
	sasTestSE       = 1700003600

	// C SDK: %2f lowercase in sr and sig, and an empty "&skn=".
	sasTokC = "SharedAccessSignature sr=0ne00000A0A%2fregistrations%2fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6" +
		"&sig=o%2bsBQ8uxnmjspY0sRKA8PwLV0fFkt9sqmAb6sdbm2f0%3d&se=1700003600&skn="
	// C#: %2F uppercase, no skn.
	sasTokCSharp = "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6" +
		"&sig=35aVMjhXtHUzngBBu5zXGrJS1O7N%2BjmPqMVacNY45rw%3D&se=1700003600"
	// Python: same signed text, skn=registration.
	sasTokPython = sasTokCSharp + "&skn=registration"
	// Node TPM: %2F, fields in another order, skn = a challenge keyName.
	sasTokNodeTPM = "SharedAccessSignature sig=35aVMjhXtHUzngBBu5zXGrJS1O7N%2BjmPqMVacNY45rw%3D&skn=ref.abc~1-2_3" +
		"&se=1700003600&sr=0ne00000A0A%2Fregistrations%2Fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"
	// Node symmetric key: sr not encoded at all.
	sasTokNodeSym = "SharedAccessSignature sr=0ne00000A0A/registrations/sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6" +
		"&sig=zC%2FjsSbyMCw4dE4%2ByBjyLqzf%2Bhoi0dJox%2BqEXMcB4nk%3D&se=1700003600"
	// IoT Edge: resource lowercased, '/' left alone.
	sasTokEdge = "SharedAccessSignature sr=0ne00000a0a/registrations/sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6" +
		"&sig=4OlzhY6WP6qaOsRmLCwb59R6bwNfbpWnxJwEzG2DMgc%3D&se=1700003600"
	// Hand-written: sig base64 not URL-encoded ('+' and '=' raw), docs order.
	sasTokRawSig = "SharedAccessSignature sig=35aVMjhXtHUzngBBu5zXGrJS1O7N+jmPqMVacNY45rw=&se=1700003600" +
		"&skn=registration&sr=0ne00000A0A%2Fregistrations%2Fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"
	// Unpadded base64.
	sasTokNoPad = "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6" +
		"&sig=35aVMjhXtHUzngBBu5zXGrJS1O7N%2BjmPqMVacNY45rw&se=1700003600"

	// A second key (hex 000102...0f, 16 bytes), an id with ':' and capitals,
	// se 1700000300: printf '%s\n%s' '0ne00000A0A%2Fregistrations%2FDev%3A01'
	// 1700000300 | openssl dgst -sha256 -mac HMAC -macopt
	// hexkey:000102030405060708090a0b0c0d0e0f -binary | base64
	sasTokColon = "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2FDev%3A01" +
		"&sig=UbeBZqRwDAu7dcgElNcB9X%2BjO7lDvyviwXHObxaXc3g%3D&se=1700000300"
	// Service token for the operator API, signed with the first key:
	// printf '%s\n%s' dps.example.com 1700003600 | openssl ...
	sasTokService = "SharedAccessSignature sr=dps.example.com&sig=mAb2HbzkbOaMh0UraKAqrUAax2aIqOpqXEg74f%2B6oHc%3D" +
		"&se=1700003600&skn=provisioningserviceowner"
)

// sasTestKey returns the first test key.
func sasTestKey(t testing.TB) []byte {
	t.Helper()
	k, err := base64.StdEncoding.DecodeString(sasTestKeyB64)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sasTestKey16 returns the second test key, bytes 0..15.
func sasTestKey16() []byte {
	k := make([]byte, 16)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

func TestSASClientFormsVerify(t *testing.T) {
	key := sasTestKey(t)
	now := time.Unix(sasTestNow, 0)
	tests := []struct {
		name, token      string
		key              []byte
		resource         string
		keyName          string
		decodedResource  string
		expiry           int64
		signatureB64     string
		resourceReceived string
	}{
		{"C", sasTokC, key, sasTestResource, "", sasTestResource, sasTestSE,
			"o+sBQ8uxnmjspY0sRKA8PwLV0fFkt9sqmAb6sdbm2f0=", "0ne00000A0A%2fregistrations%2f" + sasTestRegID},
		{"CSharp", sasTokCSharp, key, sasTestResource, "", sasTestResource, sasTestSE,
			"35aVMjhXtHUzngBBu5zXGrJS1O7N+jmPqMVacNY45rw=", "0ne00000A0A%2Fregistrations%2F" + sasTestRegID},
		{"Python", sasTokPython, key, sasTestResource, "registration", sasTestResource, sasTestSE,
			"35aVMjhXtHUzngBBu5zXGrJS1O7N+jmPqMVacNY45rw=", "0ne00000A0A%2Fregistrations%2F" + sasTestRegID},
		{"NodeTPM", sasTokNodeTPM, key, sasTestResource, "ref.abc~1-2_3", sasTestResource, sasTestSE,
			"35aVMjhXtHUzngBBu5zXGrJS1O7N+jmPqMVacNY45rw=", "0ne00000A0A%2Fregistrations%2F" + sasTestRegID},
		{"NodeSymmetric", sasTokNodeSym, key, sasTestResource, "", sasTestResource, sasTestSE,
			"zC/jsSbyMCw4dE4+yBjyLqzf+hoi0dJox+qEXMcB4nk=", sasTestResource},
		{"IoTEdge", sasTokEdge, key, sasTestResource, "", strings.ToLower(sasTestResource), sasTestSE,
			"4OlzhY6WP6qaOsRmLCwb59R6bwNfbpWnxJwEzG2DMgc=", strings.ToLower(sasTestResource)},
		{"RawSig", sasTokRawSig, key, sasTestResource, "registration", sasTestResource, sasTestSE,
			"35aVMjhXtHUzngBBu5zXGrJS1O7N+jmPqMVacNY45rw=", "0ne00000A0A%2Fregistrations%2F" + sasTestRegID},
		{"NoPadding", sasTokNoPad, key, sasTestResource, "", sasTestResource, sasTestSE,
			"35aVMjhXtHUzngBBu5zXGrJS1O7N+jmPqMVacNY45rw=", "0ne00000A0A%2Fregistrations%2F" + sasTestRegID},
		// The expected resource uses the stored (lowercased) id.
		{"ColonAndCase", sasTokColon, sasTestKey16(), "0ne00000a0a/registrations/dev:01", "",
			"0ne00000A0A/registrations/Dev:01", 1700000300,
			"UbeBZqRwDAu7dcgElNcB9X+jO7lDvyviwXHObxaXc3g=", "0ne00000A0A%2Fregistrations%2FDev%3A01"},
		{"Service", sasTokService, key, "DPS.example.com", "provisioningserviceowner", "dps.example.com", sasTestSE,
			"mAb2HbzkbOaMh0UraKAqrUAax2aIqOpqXEg74f+6oHc=", "dps.example.com"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := ParseSASToken(tc.token)
			if err != nil {
				t.Fatalf("ParseSASToken: %v", err)
			}
			if tok.Resource != tc.resourceReceived {
				t.Errorf("Resource = %q, want %q", tok.Resource, tc.resourceReceived)
			}
			if tok.KeyName != tc.keyName {
				t.Errorf("KeyName = %q, want %q", tok.KeyName, tc.keyName)
			}
			if tok.Expiry.Unix() != tc.expiry || tok.ExpiryText != strconv.FormatInt(tc.expiry, 10) {
				t.Errorf("Expiry = %v (%q), want %d", tok.Expiry, tok.ExpiryText, tc.expiry)
			}
			if tok.Expiry.Location() != time.UTC {
				t.Errorf("Expiry location = %v, want UTC", tok.Expiry.Location())
			}
			if got := base64.StdEncoding.EncodeToString(tok.Signature); got != tc.signatureB64 {
				t.Errorf("Signature = %s, want %s", got, tc.signatureB64)
			}
			dec, err := tok.DecodedResource()
			if err != nil || dec != tc.decodedResource {
				t.Errorf("DecodedResource = %q, %v; want %q", dec, err, tc.decodedResource)
			}
			if err := tok.Verify(tc.key, tc.resource, now, SASPolicy{}); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

func TestSignSASKnownAnswer(t *testing.T) {
	key := sasTestKey(t)
	got := SignSAS(key, sasTestResource, time.Unix(sasTestSE, 0), "")
	if got != sasTokCSharp {
		t.Errorf("SignSAS =\n%s\nwant (OpenSSL-computed, C# form)\n%s", got, sasTokCSharp)
	}
	got = SignSAS(key, sasTestResource, time.Unix(sasTestSE, 0), "registration")
	if got != sasTokPython {
		t.Errorf("SignSAS with skn =\n%s\nwant\n%s", got, sasTokPython)
	}
	got = SignSAS(sasTestKey16(), "0ne00000A0A/registrations/Dev:01", time.Unix(1700000300, 0), "")
	if got != sasTokColon {
		t.Errorf("SignSAS with ':' =\n%s\nwant\n%s", got, sasTokColon)
	}
}

func TestSASStringToSignAndFormat(t *testing.T) {
	// The TPM path: the device signs SASStringToSign itself.
	enc := EncodeSASResource(sasTestResource)
	if want := "0ne00000A0A%2Fregistrations%2F" + sasTestRegID; enc != want {
		t.Fatalf("EncodeSASResource = %q, want %q", enc, want)
	}
	exp := time.Unix(sasTestSE, 0)
	msg := SASStringToSign(enc, exp)
	if want := enc + "\n1700003600"; string(msg) != want {
		t.Fatalf("SASStringToSign = %q, want %q", msg, want)
	}
	m := hmac.New(sha256.New, sasTestKey(t))
	m.Write(msg)
	tok := FormatSAS(enc, m.Sum(nil), exp, "ref/with space&amp")
	want := sasTokCSharp + "&skn=ref%2Fwith%20space%26amp"
	if tok != want {
		t.Fatalf("FormatSAS =\n%s\nwant\n%s", tok, want)
	}
	parsed, err := ParseSASToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	if parsed.KeyName != "ref/with space&amp" {
		t.Errorf("KeyName = %q", parsed.KeyName)
	}
	if err := parsed.Verify(sasTestKey(t), sasTestResource, time.Unix(sasTestNow, 0), SASPolicy{}); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if got := RegistrationResource(sasTestScope, sasTestRegID); got != sasTestResource {
		t.Errorf("RegistrationResource = %q", got)
	}
}

func TestSASSignVerifyRoundTrip(t *testing.T) {
	now := time.Unix(sasTestNow, 0)
	long := strings.Repeat("x", 1500) // past the stack buffer: crypto/hmac path
	for _, keyLen := range []int{1, 16, 32, 64, 65, 200} {
		for _, res := range []string{sasTestResource, "s/registrations/a:b.c_d-e", "host.example.com", long} {
			key := make([]byte, keyLen)
			rand.Read(key)
			tok, err := ParseSASToken(SignSAS(key, res, now.Add(time.Hour), "k"))
			if err != nil {
				t.Fatalf("key %d, resource %.20q: parse: %v", keyLen, res, err)
			}
			if err := tok.Verify(key, strings.ToUpper(res), now, SASPolicy{}); err != nil {
				t.Errorf("key %d, resource %.20q: verify: %v", keyLen, res, err)
			}
			// (Appending a zero byte would not do: HMAC zero-pads short keys.)
			other := bytes.Clone(key)
			other[len(other)-1] ^= 1
			if err := tok.Verify(other, res, now, SASPolicy{}); !errors.Is(err, ErrSASSignature) {
				t.Errorf("key %d: verify with another key: %v, want ErrSASSignature", keyLen, err)
			}
		}
	}
}

func TestSASMACMatchesCryptoHMAC(t *testing.T) {
	for _, keyLen := range []int{0, 1, 31, 32, 63, 64, 65, 128} {
		for _, msgLen := range []int{0, 1, 55, 56, 63, 64, 119, 120, 1000, sasMACMaxMsg - 12, sasMACMaxMsg, 3000} {
			key := make([]byte, keyLen)
			rand.Read(key)
			res := make([]byte, msgLen)
			rand.Read(res)
			got := sasMAC(key, string(res), "1700000000")
			m := hmac.New(sha256.New, key)
			m.Write(res)
			m.Write([]byte("\n1700000000"))
			if want := m.Sum(nil); !bytes.Equal(got[:], want) {
				t.Errorf("key %d bytes, resource %d bytes: sasMAC differs from crypto/hmac", keyLen, msgLen)
			}
		}
	}
}

func TestSASVerifyRejects(t *testing.T) {
	key := sasTestKey(t)
	now := time.Unix(sasTestNow, 0)
	otherRes := sasTestScope + "/registrations/other-device"
	tamperSig := strings.Replace(sasTokCSharp, "sig=35a", "sig=35b", 1)
	tamperSR := strings.Replace(sasTokCSharp, "sn-007", "sn-008", 1)
	tamperSE := strings.Replace(sasTokCSharp, "se=1700003600", "se=1700003601", 1)
	zeroSE := strings.Replace(sasTokCSharp, "se=1700003600", "se=01700003600", 1) // same value, other text
	tests := []struct {
		name, token string
		key         []byte
		resource    string
		now         time.Time
		policy      SASPolicy
		want        error
	}{
		{"tampered sig", tamperSig, key, sasTestResource, now, SASPolicy{}, ErrSASSignature},
		{"tampered sr", tamperSR, key, sasTestResource, now, SASPolicy{}, ErrSASSignature},
		{"tampered sr, its own resource", tamperSR, key, strings.Replace(sasTestResource, "sn-007", "sn-008", 1), now, SASPolicy{}, ErrSASSignature},
		{"tampered se", tamperSE, key, sasTestResource, now, SASPolicy{}, ErrSASSignature},
		{"leading zero in se", zeroSE, key, sasTestResource, now, SASPolicy{}, ErrSASSignature},
		{"wrong key", sasTokCSharp, sasTestKey16(), sasTestResource, now, SASPolicy{}, ErrSASSignature},
		{"empty key", sasTokCSharp, nil, sasTestResource, now, SASPolicy{}, ErrSASSignature},
		{"wrong resource", sasTokCSharp, key, otherRes, now, SASPolicy{}, ErrSASResource},
		{"resource prefix", sasTokCSharp, key, sasTestResource + "x", now, SASPolicy{}, ErrSASResource},
		{"resource longer", sasTokCSharp, key, sasTestScope, now, SASPolicy{}, ErrSASResource},
		{"expired", sasTokCSharp, key, sasTestResource, time.Unix(sasTestSE, 0).Add(DefaultSASClockSkew + time.Second), SASPolicy{}, ErrSASExpired},
		{"expired, small skew", sasTokCSharp, key, sasTestResource, time.Unix(sasTestSE+2, 0), SASPolicy{ClockSkew: time.Second}, ErrSASExpired},
		{"too long-lived", sasTokCSharp, key, sasTestResource, now, SASPolicy{MaxLifetime: 30 * time.Minute}, ErrSASLifetime},
		{"too long-lived, default", sasTokCSharp, key, sasTestResource, time.Unix(sasTestSE, 0).Add(-26 * time.Hour), SASPolicy{}, ErrSASLifetime},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := ParseSASToken(tc.token)
			if err != nil {
				t.Fatalf("ParseSASToken: %v", err)
			}
			err = tok.Verify(tc.key, tc.resource, tc.now, tc.policy)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
			sasAssertNoSecret(t, err, tc.token, tc.key)
		})
	}
}

// sasAssertNoSecret fails if err's text contains the token's signature or
// the key, in any encoding a reader could recognise.
func sasAssertNoSecret(t *testing.T, err error, token string, key []byte) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	if _, after, ok := strings.Cut(token, "sig="); ok {
		sig, _, _ := strings.Cut(after, "&")
		if len(sig) >= 8 && strings.Contains(msg, sig[:8]) {
			t.Errorf("error %q contains the signature", msg)
		}
	}
	if len(key) > 0 && strings.Contains(msg, base64.StdEncoding.EncodeToString(key)[:8]) {
		t.Errorf("error %q contains the key", msg)
	}
}

func TestSASExpiryBoundaries(t *testing.T) {
	key := sasTestKey(t)
	tok, err := ParseSASToken(sasTokCSharp)
	if err != nil {
		t.Fatal(err)
	}
	se := time.Unix(sasTestSE, 0)
	custom := SASPolicy{ClockSkew: 10 * time.Second, MaxLifetime: time.Hour}
	tests := []struct {
		name   string
		now    time.Time
		policy SASPolicy
		want   error
	}{
		{"default skew, last accepted second", se.Add(DefaultSASClockSkew), SASPolicy{}, nil},
		{"default skew, first rejected second", se.Add(DefaultSASClockSkew + time.Second), SASPolicy{}, ErrSASExpired},
		{"default lifetime, longest accepted", se.Add(-DefaultSASMaxLifetime - DefaultSASClockSkew), SASPolicy{}, nil},
		{"default lifetime, one second too long", se.Add(-DefaultSASMaxLifetime - DefaultSASClockSkew - time.Second), SASPolicy{}, ErrSASLifetime},
		{"negative policy means default", se.Add(DefaultSASClockSkew), SASPolicy{ClockSkew: -1, MaxLifetime: -1}, nil},
		{"custom skew, last accepted second", se.Add(10 * time.Second), custom, nil},
		{"custom skew, first rejected second", se.Add(11 * time.Second), custom, ErrSASExpired},
		{"custom lifetime, longest accepted", se.Add(-time.Hour - 10*time.Second), custom, nil},
		{"custom lifetime, one second too long", se.Add(-time.Hour - 11*time.Second), custom, ErrSASLifetime},
		{"30 s lifetime (IoT Edge)", se.Add(-30 * time.Second), custom, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tok.Verify(key, sasTestResource, tc.now, tc.policy)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSASVerifyHandBuiltToken(t *testing.T) {
	// A token built without ExpiryText signs the canonical text of Expiry.
	key := sasTestKey(t)
	parsed, err := ParseSASToken(sasTokCSharp)
	if err != nil {
		t.Fatal(err)
	}
	tok := &SASToken{Resource: parsed.Resource, Signature: parsed.Signature, Expiry: time.Unix(sasTestSE, 0)}
	if err := tok.Verify(key, sasTestResource, time.Unix(sasTestNow, 0), SASPolicy{}); err != nil {
		t.Errorf("Verify: %v", err)
	}
	tok.Expiry = tok.Expiry.Add(time.Second)
	if err := tok.Verify(key, sasTestResource, time.Unix(sasTestNow, 0), SASPolicy{}); !errors.Is(err, ErrSASSignature) {
		t.Errorf("Verify after moving Expiry = %v, want ErrSASSignature", err)
	}
	// Unsigned fields cannot extend a token: the signed ExpiryText rules.
	parsed.Expiry = parsed.Expiry.Add(24 * time.Hour)
	if err := parsed.Verify(key, sasTestResource, time.Unix(sasTestSE+3600, 0), SASPolicy{}); !errors.Is(err, ErrSASExpired) {
		t.Errorf("Verify with edited Expiry = %v, want ErrSASExpired", err)
	}
	var nilTok *SASToken
	if err := nilTok.Verify(key, sasTestResource, time.Now(), SASPolicy{}); !errors.Is(err, ErrSASMalformed) {
		t.Errorf("nil token: %v", err)
	}
}

func TestSASVerifyDoesNotAllocate(t *testing.T) {
	key := sasTestKey(t)
	tok, err := ParseSASToken(sasTokC)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(sasTestNow, 0)
	var verr error
	allocs := testing.AllocsPerRun(100, func() {
		verr = tok.Verify(key, sasTestResource, now, SASPolicy{})
	})
	if verr != nil {
		t.Fatal(verr)
	}
	if allocs != 0 {
		t.Errorf("Verify allocates %v times per call, want 0", allocs)
	}
}

func TestSASTokenStringRedacts(t *testing.T) {
	tok, err := ParseSASToken(sasTokPython)
	if err != nil {
		t.Fatal(err)
	}
	s := tok.String()
	want := "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2F" + sasTestRegID +
		"&sig=REDACTED&se=1700003600&skn=registration"
	if s != want {
		t.Errorf("String() = %q, want %q", s, want)
	}
	if strings.Contains(s, "35aVMj") {
		t.Errorf("String() leaks the signature: %q", s)
	}
}

func TestParseSASTokenMalformed(t *testing.T) {
	const sr = "sr=0ne00000A0A%2Fregistrations%2Fdev"
	const sig = "sig=35aVMjhXtHUzngBBu5zXGrJS1O7N%2BjmPqMVacNY45rw%3D"
	const se = "se=1700003600"
	good := SASPrefix + sr + "&" + sig + "&" + se
	if _, err := ParseSASToken(good); err != nil {
		t.Fatalf("the base of the table does not parse: %v", err)
	}
	bad := map[string]string{
		"empty":                   "",
		"prefix only":             SASPrefix,
		"no prefix":               sr + "&" + sig + "&" + se,
		"lowercase prefix":        "sharedaccesssignature " + sr + "&" + sig + "&" + se,
		"two spaces":              "SharedAccessSignature  " + sr + "&" + sig + "&" + se,
		"tab":                     "SharedAccessSignature\t" + sr + "&" + sig + "&" + se,
		"leading space":           " " + good,
		"trailing space":          good + " ",
		"trailing newline":        good + "\n",
		"space inside":            SASPrefix + sr + "& " + sig + "&" + se,
		"non-ASCII":               good + "&skn=r\u00e9g",
		"NUL":                     good + "\x00",
		"missing sr":              SASPrefix + sig + "&" + se,
		"missing sig":             SASPrefix + sr + "&" + se,
		"missing se":              SASPrefix + sr + "&" + sig,
		"empty sr":                SASPrefix + "sr=&" + sig + "&" + se,
		"empty sig":               SASPrefix + sr + "&sig=&" + se,
		"empty se":                SASPrefix + sr + "&" + sig + "&se=",
		"duplicate sr":            good + "&" + sr,
		"duplicate sig":           good + "&" + sig,
		"duplicate se":            good + "&se=1700003600",
		"duplicate skn":           good + "&skn=a&skn=b",
		"duplicate empty skn":     good + "&skn=&skn=",
		"unknown field":           good + "&foo=bar",
		"uppercase field name":    SASPrefix + "SR=x&" + sig + "&" + se,
		"field without =":         good + "&skn",
		"bare word":               SASPrefix + "token",
		"empty field":             SASPrefix + sr + "&&" + sig + "&" + se,
		"leading &":               SASPrefix + "&" + sr + "&" + sig + "&" + se,
		"trailing &":              good + "&",
		"se not numeric":          SASPrefix + sr + "&" + sig + "&se=17000036OO",
		"se negative":             SASPrefix + sr + "&" + sig + "&se=-1",
		"se plus sign":            SASPrefix + sr + "&" + sig + "&se=%2B1700003600",
		"se fractional":           SASPrefix + sr + "&" + sig + "&se=1700003600.5",
		"se hex":                  SASPrefix + sr + "&" + sig + "&se=0x65",
		"se after 9999":           SASPrefix + sr + "&" + sig + "&se=253402300800",
		"se 21 digits":            SASPrefix + sr + "&" + sig + "&se=000000000001700003600",
		"se overflow":             SASPrefix + sr + "&" + sig + "&se=99999999999999999999",
		"sig not base64":          SASPrefix + sr + "&sig=!!!!&" + se,
		"sig url-safe base64":     SASPrefix + sr + "&sig=35aVMjhXtHUzngBBu5zXGrJS1O7N-jmPqMVacNY45rw%3D&" + se,
		"sig 31 bytes":            SASPrefix + sr + "&sig=" + base64.StdEncoding.EncodeToString(make([]byte, 31)) + "&" + se,
		"sig 33 bytes":            SASPrefix + sr + "&sig=" + base64.StdEncoding.EncodeToString(make([]byte, 33)) + "&" + se,
		"sig 64 bytes":            SASPrefix + sr + "&sig=" + base64.StdEncoding.EncodeToString(make([]byte, 64)) + "&" + se,
		"sig bad escape":          SASPrefix + sr + "&sig=35aVMjhXtHUzngBBu5zXGrJS1O7N%2GjmPqMVacNY45rw%3D&" + se,
		"sig truncated escape":    SASPrefix + sr + "&sig=35aVMjhXtHUzngBBu5zXGrJS1O7N%2BjmPqMVacNY45rw%3&" + se,
		"sig double padding":      SASPrefix + sr + "&sig=35aVMjhXtHUzngBBu5zXGrJS1O7N%2BjmPqMVacNY45r%3D%3D&" + se,
		"sig with space escape":   SASPrefix + sr + "&sig=35aVMjhXtHUzngBBu5zXGrJS1O7N%20jmPqMVacNY45rw%3D&" + se,
		"sig with newline escape": SASPrefix + sr + "&sig=35aVMjhXtHUzngBBu5zXGrJS1O7N%2BjmPqM%0AVacNY45rw%3D&" + se,
		"sig with CR escape":      SASPrefix + sr + "&sig=35aVMjhXtHUzngBBu5zXGrJS1O7N%2BjmPqM%0dVacNY45rw%3D&" + se,
		"sr bad escape":           SASPrefix + "sr=0ne%2Xregistrations&" + sig + "&" + se,
		"sr truncated escape":     SASPrefix + "sr=0ne%2&" + sig + "&" + se,
		"sr percent at end":       SASPrefix + "sr=0ne%&" + sig + "&" + se,
		"skn bad escape":          good + "&skn=a%zz",
		"too long":                good + "&skn=" + strings.Repeat("a", MaxSASTokenLen),
		"just over the bound":     good + "&skn=" + strings.Repeat("a", MaxSASTokenLen-len(good)-4),
		"prefix without space":    "SharedAccessSignature" + sr + "&" + sig + "&" + se,
		"other scheme":            "Bearer " + sr + "&" + sig + "&" + se,
		"query-style ? separator": SASPrefix + "?" + sr + "&" + sig + "&" + se,
	}
	for name, s := range bad {
		t.Run(name, func(t *testing.T) {
			tok, err := ParseSASToken(s)
			if !errors.Is(err, ErrSASMalformed) {
				t.Fatalf("ParseSASToken = %v, %v; want ErrSASMalformed", tok, err)
			}
			if tok != nil {
				t.Errorf("token returned with an error")
			}
			sasAssertNoSecret(t, err, s, nil)
		})
	}
	// Exactly at the bound is accepted.
	atBound := good + "&skn=" + strings.Repeat("a", MaxSASTokenLen-len(good)-5)
	if len(atBound) != MaxSASTokenLen {
		t.Fatalf("test bug: len %d", len(atBound))
	}
	if _, err := ParseSASToken(atBound); err != nil {
		t.Errorf("token of exactly MaxSASTokenLen bytes: %v", err)
	}
}

func TestParseSASTokenDecodesEscapesOnlyWhereInterpreted(t *testing.T) {
	// '+' in sr is literal and signed as received; %2b in skn is decoded.
	key := sasTestKey(t)
	exp := time.Unix(sasTestSE, 0)
	enc := "host+name%2bx"
	m := hmac.New(sha256.New, key)
	m.Write(SASStringToSign(enc, exp))
	tok, err := ParseSASToken(FormatSAS(enc, m.Sum(nil), exp, "") + "&skn=a%2bb+c")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Resource != enc {
		t.Errorf("Resource = %q, want %q (as received)", tok.Resource, enc)
	}
	if tok.KeyName != "a+b+c" {
		t.Errorf("KeyName = %q, want %q", tok.KeyName, "a+b+c")
	}
	if err := tok.Verify(key, "HOST+NAME+X", time.Unix(sasTestNow, 0), SASPolicy{}); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if err := tok.Verify(key, "host name x", time.Unix(sasTestNow, 0), SASPolicy{}); !errors.Is(err, ErrSASResource) {
		t.Errorf("'+' decoded as a space: %v", err)
	}
}

// FuzzParseSASToken checks that parsing never panics, that every error is
// ErrSASMalformed, and that an accepted token survives FormatSAS and
// re-parsing, and verifies when re-signed over its own signed text.
func FuzzParseSASToken(f *testing.F) {
	for _, s := range []string{sasTokC, sasTokCSharp, sasTokPython, sasTokNodeTPM, sasTokNodeSym,
		sasTokEdge, sasTokRawSig, sasTokNoPad, sasTokColon, sasTokService} {
		f.Add(s)
	}
	key := []byte("fuzz key, 32 bytes long, really")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseSASToken(s)
		if err != nil {
			if !errors.Is(err, ErrSASMalformed) {
				t.Fatalf("error %v is not ErrSASMalformed", err)
			}
			if tok != nil {
				t.Fatal("token returned with an error")
			}
			return
		}
		if len(s) > MaxSASTokenLen || tok.Resource == "" || len(tok.Signature) != sasSigLen || tok.ExpiryText == "" {
			t.Fatalf("accepted token breaks the rules: %#v", tok)
		}
		dec, err := tok.DecodedResource()
		if err != nil {
			t.Fatalf("accepted sr does not decode: %v", err)
		}
		// Round trip through FormatSAS.
		again, err := ParseSASToken(FormatSAS(tok.Resource, tok.Signature, tok.Expiry, tok.KeyName))
		if err != nil {
			t.Fatalf("FormatSAS output does not parse: %v", err)
		}
		if again.Resource != tok.Resource || !bytes.Equal(again.Signature, tok.Signature) ||
			!again.Expiry.Equal(tok.Expiry) || again.KeyName != tok.KeyName {
			t.Fatalf("round trip changed the token:\n%#v\n%#v", tok, again)
		}
		// A wrong signature never verifies; the right one does.
		if err := tok.Verify(key, dec, tok.Expiry, SASPolicy{}); !errors.Is(err, ErrSASSignature) {
			t.Fatalf("random signature: Verify = %v", err)
		}
		m := hmac.New(sha256.New, key)
		m.Write([]byte(tok.Resource + "\n" + tok.ExpiryText))
		tok.Signature = m.Sum(nil)
		if err := tok.Verify(key, sasTestASCIIUpper(dec), tok.Expiry, SASPolicy{}); err != nil {
			t.Fatalf("re-signed token: Verify = %v", err)
		}
	})
}

// sasTestASCIIUpper uppercases ASCII letters only, leaving other bytes as
// they are (strings.ToUpper would also touch non-ASCII text).
func sasTestASCIIUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}
