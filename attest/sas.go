package attest

// SAS tokens (docs/protocol.md section 6).
//
// A device proves that it holds a key by sending, as its MQTT password,
//
//	SharedAccessSignature sr={resource}&sig={sig}&se={expiry}[&skn={keyName}]
//
// where sig = base64(HMAC-SHA256(key, sr + "\n" + se)), URL-encoded. The
// stock clients encode sr differently (%2f, %2F, not at all, lowercased), so
// the signature is always checked over sr and se exactly as received, and
// the resource is compared separately after percent-decoding,
// case-insensitively. The same format, with sr = the service host name and
// skn = the policy name, authorizes the operator API.
//
// Parsing rules (stricter than Azure where no client needs the leniency):
//   - The prefix is "SharedAccessSignature" followed by exactly one ASCII
//     space, matched case-sensitively, as Azure's own parser does
//     (StringComparison.Ordinal). Azure also accepts a tab there; we do not.
//   - The rest is printable ASCII with no spaces, split on '&'; each field is
//     split on its first '='. Field names are the lowercase sr, sig, se and
//     skn that every client sends (Azure compares names case-insensitively;
//     we do not). Unknown, duplicate and empty fields, and empty sr, sig or se
//     values, are malformed. An empty skn ("&skn=") means "no key name":
//     C-derived clients write it that way.
//   - No generic query parser is used: '+' in sig and sr is a literal '+',
//     never a space, and percent-escapes (either hex case) are decoded only
//     where a value is interpreted, never in the signed text.
//   - sig is percent-decoded, then decoded as standard base64 (padding
//     optional), and must be exactly 32 bytes (an HMAC-SHA256).
//   - se is 1-20 ASCII digits, at most 253402300799 (the last second of year
//     9999).
//   - The whole token is at most MaxSASTokenLen bytes.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// SASPrefix starts every SAS token: the scheme name and exactly one space.
const SASPrefix = "SharedAccessSignature "

// MaxSASTokenLen bounds the token length accepted by ParseSASToken. A device
// token is under 300 bytes; the bound only keeps hostile input cheap.
const MaxSASTokenLen = 4096

// DefaultSASClockSkew is the clock difference tolerated between device and
// broker when SASPolicy.ClockSkew is zero: 5 minutes, the usual allowance
// (Azure's service libraries use the same MaxClockSkew). IoT Edge signs
// tokens valid for only 30 s, so a device clock a little behind still works.
const DefaultSASClockSkew = 5 * time.Minute

// DefaultSASMaxLifetime is the longest token lifetime accepted when
// SASPolicy.MaxLifetime is zero: the C# SDK signs tokens valid for one day,
// and an hour of margin covers its clock running ahead of ours.
const DefaultSASMaxLifetime = 25 * time.Hour

const (
	sasSigLen        = sha256.Size  // sig is an HMAC-SHA256
	sasMaxExpiryUnix = 253402300799 // 9999-12-31T23:59:59Z
	sasMaxExpiryLen  = 20           // digits of se, leading zeros included
	sasMACBlock      = 64           // SHA-256 block size, the HMAC pad length
	sasMACMaxMsg     = 1024         // longest message MACed without allocating
)

// Errors returned by ParseSASToken and (*SASToken).Verify. They are wrapped
// with detail; test with errors.Is. No error ever carries the signature or
// the key.
var (
	// ErrSASMalformed means the token does not have the SAS syntax.
	ErrSASMalformed = errors.New("attest: malformed SAS token")
	// ErrSASSignature means the signature was not made with the given key.
	ErrSASSignature = errors.New("attest: SAS signature does not verify")
	// ErrSASResource means the token was signed for another resource.
	ErrSASResource = errors.New("attest: SAS token is for another resource")
	// ErrSASExpired means the expiry is in the past (beyond the clock skew).
	ErrSASExpired = errors.New("attest: SAS token expired")
	// ErrSASLifetime means the expiry is further ahead than the policy allows.
	ErrSASLifetime = errors.New("attest: SAS token lifetime too long")
)

// SASToken is a parsed SharedAccessSignature. Resource and ExpiryText are
// kept exactly as received because the signature covers those bytes.
type SASToken struct {
	Resource   string    // sr exactly as received (still URL-encoded)
	Signature  []byte    // decoded sig (32 bytes)
	Expiry     time.Time // se as a UTC time
	KeyName    string    // skn, percent-decoded; "" when absent or empty
	ExpiryText string    // se exactly as received; the signed text
}

// SASPolicy bounds token lifetimes during verification. Zero (or negative)
// fields take the defaults DefaultSASClockSkew and DefaultSASMaxLifetime.
type SASPolicy struct {
	// ClockSkew is how far the device clock may be off: a token is still
	// accepted ClockSkew after its expiry.
	ClockSkew time.Duration
	// MaxLifetime is the furthest ahead (plus ClockSkew) an expiry may be.
	MaxLifetime time.Duration
}

// withDefaults returns p with zero or negative fields replaced by defaults.
func (p SASPolicy) withDefaults() SASPolicy {
	if p.ClockSkew <= 0 {
		p.ClockSkew = DefaultSASClockSkew
	}
	if p.MaxLifetime <= 0 {
		p.MaxLifetime = DefaultSASMaxLifetime
	}
	return p
}

// ParseSASToken parses "SharedAccessSignature sr=..&sig=..&se=..[&skn=..]"
// strictly (see the rules at the top of sas.go). It checks syntax only: call
// Verify to check the signature, resource and expiry. Errors wrap
// ErrSASMalformed.
func ParseSASToken(s string) (*SASToken, error) {
	if len(s) > MaxSASTokenLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrSASMalformed, MaxSASTokenLen)
	}
	if !strings.HasPrefix(s, SASPrefix) {
		return nil, fmt.Errorf("%w: does not start with %q", ErrSASMalformed, SASPrefix)
	}
	body := s[len(SASPrefix):]
	if body == "" {
		return nil, fmt.Errorf("%w: no fields", ErrSASMalformed)
	}
	for i := 0; i < len(body); i++ {
		if c := body[i]; c <= ' ' || c >= 0x7f {
			return nil, fmt.Errorf("%w: space, control or non-ASCII byte at offset %d",
				ErrSASMalformed, len(SASPrefix)+i)
		}
	}

	var sr, sig, se, skn string
	var seen [4]bool // sr, sig, se, skn
	for rest, more := body, true; more; {
		var field string
		field, rest, more = strings.Cut(rest, "&")
		if field == "" {
			return nil, fmt.Errorf("%w: empty field", ErrSASMalformed)
		}
		name, value, ok := strings.Cut(field, "=")
		if !ok {
			return nil, fmt.Errorf("%w: field %q has no '='", ErrSASMalformed, sasClip(name))
		}
		var idx int
		var dst *string
		switch name {
		case "sr":
			idx, dst = 0, &sr
		case "sig":
			idx, dst = 1, &sig
		case "se":
			idx, dst = 2, &se
		case "skn":
			idx, dst = 3, &skn
		default:
			return nil, fmt.Errorf("%w: unknown field %q", ErrSASMalformed, sasClip(name))
		}
		if seen[idx] {
			return nil, fmt.Errorf("%w: duplicate field %s", ErrSASMalformed, name)
		}
		seen[idx] = true
		if value == "" && name != "skn" {
			return nil, fmt.Errorf("%w: empty %s", ErrSASMalformed, name)
		}
		*dst = value
	}
	for i, name := range [...]string{"sr", "sig", "se"} {
		if !seen[i] {
			return nil, fmt.Errorf("%w: missing field %s", ErrSASMalformed, name)
		}
	}

	if !sasValidEscapes(sr) {
		return nil, fmt.Errorf("%w: sr has an invalid percent-escape", ErrSASMalformed)
	}
	sigBytes, err := sasDecodeSig(sig)
	if err != nil {
		return nil, err
	}
	expiry, err := sasParseExpiry(se)
	if err != nil {
		return nil, err
	}
	keyName, ok := sasUnescape(skn, false)
	if !ok {
		return nil, fmt.Errorf("%w: skn has an invalid percent-escape", ErrSASMalformed)
	}
	return &SASToken{
		Resource:   sr,
		Signature:  sigBytes,
		Expiry:     time.Unix(expiry, 0).UTC(),
		KeyName:    keyName,
		ExpiryText: se,
	}, nil
}

// Verify checks, in this order, that the signature is HMAC-SHA256(key,
// Resource + "\n" + ExpiryText) (compared in constant time), that the
// percent-decoded Resource equals expectedResource ignoring ASCII case, and
// that the expiry lies within [now - ClockSkew, now + MaxLifetime +
// ClockSkew]. The expiry checked is the signed text, never a field that was
// not signed. Verify does not allocate when the token is valid. It is
// VerifySignature followed by VerifyClaims.
//
// expectedResource is the plain resource, e.g. "0ne00000A0A/registrations/
// my-device" for a device or the host name for a service token.
func (t *SASToken) Verify(key []byte, expectedResource string, now time.Time, policy SASPolicy) error {
	if err := t.VerifySignature(key); err != nil {
		return err
	}
	return t.VerifyClaims(expectedResource, now, policy)
}

// VerifySignature checks only that the signature is HMAC-SHA256(key,
// Resource + "\n" + ExpiryText), compared in constant time: ErrSASSignature
// when it is not. A caller trying many keys (one per enrollment group)
// checks the claims once with VerifyClaims and then the keys with this.
// It does not allocate for a parsed token.
func (t *SASToken) VerifySignature(key []byte) error {
	if t == nil {
		return fmt.Errorf("%w: nil token", ErrSASMalformed)
	}
	if len(key) == 0 {
		return fmt.Errorf("%w: empty key", ErrSASSignature)
	}
	var seBuf [sasMaxExpiryLen]byte
	seText := t.ExpiryText
	if seText == "" {
		// A token built by hand: sign the canonical text of Expiry.
		seText = string(strconv.AppendInt(seBuf[:0], t.Expiry.Unix(), 10))
	}
	mac := sasMAC(key, t.Resource, seText)
	if !hmac.Equal(mac[:], t.Signature) {
		return ErrSASSignature
	}
	return nil
}

// VerifyClaims checks what Verify checks besides the signature: that the
// percent-decoded Resource equals expectedResource ignoring ASCII case and
// that the signed expiry lies within [now - ClockSkew, now + MaxLifetime +
// ClockSkew]. On its own it proves nothing about the sender.
func (t *SASToken) VerifyClaims(expectedResource string, now time.Time, policy SASPolicy) error {
	if t == nil {
		return fmt.Errorf("%w: nil token", ErrSASMalformed)
	}
	var se int64
	if t.ExpiryText == "" {
		se = t.Expiry.Unix()
	} else {
		var err error
		if se, err = sasParseExpiry(t.ExpiryText); err != nil {
			return err
		}
	}
	if !sasResourceEqual(t.Resource, expectedResource) {
		return ErrSASResource
	}

	// Whole seconds throughout: se has no finer resolution, and every term
	// fits an int64 (policy durations are at most ~292 years in seconds).
	p := policy.withDefaults()
	nowSec := now.Unix()
	skewSec := int64(p.ClockSkew / time.Second)
	lifeSec := int64(p.MaxLifetime / time.Second)
	if se < nowSec-skewSec {
		return fmt.Errorf("%w: %ds ago (clock skew allowance %s)",
			ErrSASExpired, nowSec-se, p.ClockSkew)
	}
	if se > nowSec+lifeSec+skewSec {
		return fmt.Errorf("%w: valid for %ds, at most %s allowed",
			ErrSASLifetime, se-nowSec, p.MaxLifetime)
	}
	return nil
}

// DecodedResource returns Resource with its percent-escapes decoded ('+'
// stays '+'): the plain resource, e.g. "{idScope}/registrations/{id}".
func (t *SASToken) DecodedResource() (string, error) {
	r, ok := sasUnescape(t.Resource, false)
	if !ok {
		return "", fmt.Errorf("%w: sr has an invalid percent-escape", ErrSASMalformed)
	}
	return r, nil
}

// String returns the token with its signature redacted, so that a token that
// reaches a log or an error message gives nothing away.
func (t *SASToken) String() string {
	if t == nil {
		return "<nil>"
	}
	s := SASPrefix + "sr=" + t.Resource + "&sig=REDACTED&se=" + t.ExpiryText
	if t.ExpiryText == "" {
		s += strconv.FormatInt(t.Expiry.Unix(), 10)
	}
	if t.KeyName != "" {
		s += "&skn=" + sasEscape(t.KeyName)
	}
	return s
}

// RegistrationResource returns the SAS resource of a device registration,
// "{idScope}/registrations/{registrationID}", not yet URL-encoded.
func RegistrationResource(idScope, registrationID string) string {
	return idScope + "/registrations/" + registrationID
}

// EncodeSASResource URL-encodes a resource as the C# and Python SDKs do:
// everything but A-Z a-z 0-9 - . _ ~ becomes %XX with uppercase hex, so '/'
// is "%2F" and ':' is "%3A".
func EncodeSASResource(resource string) string {
	return sasEscape(resource)
}

// SASStringToSign returns the bytes a SAS signature covers:
// encodedResource + "\n" + the decimal Unix seconds of expiry. A device whose
// key lives in a TPM signs these bytes with TPM2_HMAC and passes the result
// to FormatSAS.
func SASStringToSign(encodedResource string, expiry time.Time) []byte {
	b := make([]byte, 0, len(encodedResource)+1+sasMaxExpiryLen)
	b = append(b, encodedResource...)
	b = append(b, '\n')
	return strconv.AppendInt(b, expiry.Unix(), 10)
}

// FormatSAS assembles a token from an already URL-encoded resource, a raw
// signature (base64- and URL-encoded here), the expiry and an optional key
// name (URL-encoded here; omitted when empty). expiry must be after 1970.
func FormatSAS(encodedResource string, signature []byte, expiry time.Time, keyName string) string {
	var b strings.Builder
	b.Grow(len(SASPrefix) + len(encodedResource) + 80 + 3*len(keyName))
	b.WriteString(SASPrefix)
	b.WriteString("sr=")
	b.WriteString(encodedResource)
	b.WriteString("&sig=")
	b.WriteString(sasEscape(base64.StdEncoding.EncodeToString(signature)))
	b.WriteString("&se=")
	b.WriteString(strconv.FormatInt(expiry.Unix(), 10))
	if keyName != "" {
		b.WriteString("&skn=")
		b.WriteString(sasEscape(keyName))
	}
	return b.String()
}

// SignSAS builds a device-side token for resource (plain, e.g. from
// RegistrationResource) signed with key, as the C# and Python SDKs do: sr
// URL-encoded with uppercase hex, sig URL-encoded base64, se the Unix seconds
// of expiry, and "&skn=keyName" appended when keyName is not empty.
func SignSAS(key []byte, resource string, expiry time.Time, keyName string) string {
	encoded := EncodeSASResource(resource)
	m := hmac.New(sha256.New, key)
	m.Write(SASStringToSign(encoded, expiry))
	return FormatSAS(encoded, m.Sum(nil), expiry, keyName)
}

// sasMAC returns HMAC-SHA256(key, resource + "\n" + expiry).
//
// crypto/hmac allocates five times per MAC; the broker verifies a token per
// connection attempt, so for keys up to one block and messages up to
// sasMACMaxMsg bytes this builds the two padded blocks of RFC 2104 on the
// stack and hashes them with sha256.Sum256. Anything larger goes through
// crypto/hmac. Tests check both paths against crypto/hmac and openssl.
func sasMAC(key []byte, resource, expiry string) (out [sha256.Size]byte) {
	msgLen := len(resource) + 1 + len(expiry)
	if len(key) > sasMACBlock || msgLen > sasMACMaxMsg {
		return sasMACSlow(key, resource, expiry)
	}
	// buf holds (K xor ipad) || message, then (K xor opad) || inner hash.
	var buf [sasMACBlock + sasMACMaxMsg]byte
	for i := range sasMACBlock {
		var k byte
		if i < len(key) {
			k = key[i]
		}
		buf[i] = k ^ 0x36
	}
	n := sasMACBlock
	n += copy(buf[n:], resource)
	buf[n] = '\n'
	n++
	n += copy(buf[n:], expiry)
	inner := sha256.Sum256(buf[:n])
	for i := range sasMACBlock {
		var k byte
		if i < len(key) {
			k = key[i]
		}
		buf[i] = k ^ 0x5c
	}
	copy(buf[sasMACBlock:], inner[:])
	out = sha256.Sum256(buf[:sasMACBlock+sha256.Size])
	clear(buf[:sasMACBlock]) // do not leave padded key bytes on the stack
	return out
}

// sasMACSlow is sasMAC through crypto/hmac, for long keys and messages. It
// is a separate function so that its allocations do not make sasMAC's
// arguments escape, and it hands crypto/hmac a copy of the key for the same
// reason: a key on the caller's stack (a device key derived per group)
// stays there.
func sasMACSlow(key []byte, resource, expiry string) (out [sha256.Size]byte) {
	k := make([]byte, len(key))
	copy(k, key)
	m := hmac.New(sha256.New, k)
	io.WriteString(m, resource)
	io.WriteString(m, "\n")
	io.WriteString(m, expiry)
	m.Sum(out[:0])
	return out
}

// sasDecodeSig percent-decodes then base64-decodes a sig value and checks
// that it is an HMAC-SHA256.
func sasDecodeSig(sig string) ([]byte, error) {
	// 32 bytes are 44 base64 characters; allow a little slack before
	// rejecting so that the error says "length" rather than "encoding".
	const maxB64 = 64
	var b64 [maxB64]byte
	n := 0
	for i := 0; i < len(sig); {
		if n == maxB64 {
			return nil, fmt.Errorf("%w: sig is not a %d-byte HMAC", ErrSASMalformed, sasSigLen)
		}
		c := sig[i]
		if c == '%' {
			v, ok := sasUnhexPair(sig, i)
			if !ok {
				return nil, fmt.Errorf("%w: sig has an invalid percent-escape", ErrSASMalformed)
			}
			c = v
			i += 3
		} else {
			i++
		}
		if !sasBase64Char(c) {
			// Go's decoder skips '\r' and '\n'; a signature has neither.
			return nil, fmt.Errorf("%w: sig is not base64", ErrSASMalformed)
		}
		b64[n] = c
		n++
	}
	enc := base64.StdEncoding
	if n%4 != 0 {
		enc = base64.RawStdEncoding
	}
	var raw [maxB64]byte
	m, err := enc.Decode(raw[:], b64[:n])
	if err != nil {
		return nil, fmt.Errorf("%w: sig is not base64", ErrSASMalformed)
	}
	if m != sasSigLen {
		return nil, fmt.Errorf("%w: sig is not a %d-byte HMAC", ErrSASMalformed, sasSigLen)
	}
	out := make([]byte, sasSigLen)
	copy(out, raw[:m])
	return out, nil
}

// sasBase64Char reports whether c belongs to standard base64 text.
func sasBase64Char(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '+' || c == '/' || c == '='
}

// sasParseExpiry parses se: 1-20 ASCII digits, at most sasMaxExpiryUnix.
func sasParseExpiry(se string) (int64, error) {
	if se == "" || len(se) > sasMaxExpiryLen {
		return 0, fmt.Errorf("%w: se is not 1-%d digits", ErrSASMalformed, sasMaxExpiryLen)
	}
	var v int64
	for i := 0; i < len(se); i++ {
		c := se[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%w: se is not a decimal number of seconds", ErrSASMalformed)
		}
		v = v*10 + int64(c-'0')
		if v > sasMaxExpiryUnix {
			return 0, fmt.Errorf("%w: se is after year 9999", ErrSASMalformed)
		}
	}
	return v, nil
}

// sasResourceEqual reports whether percent-decoding encoded gives expected,
// ignoring ASCII case. It does not allocate. The resource is public, so the
// comparison need not be constant-time.
func sasResourceEqual(encoded, expected string) bool {
	j := 0
	for i := 0; i < len(encoded); {
		c := encoded[i]
		if c == '%' {
			v, ok := sasUnhexPair(encoded, i)
			if !ok {
				return false
			}
			c = v
			i += 3
		} else {
			i++
		}
		if j >= len(expected) || sasLower(c) != sasLower(expected[j]) {
			return false
		}
		j++
	}
	return j == len(expected)
}

// sasValidEscapes reports whether every '%' in s starts a %XX escape.
func sasValidEscapes(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' {
			if _, ok := sasUnhexPair(s, i); !ok {
				return false
			}
			i += 2
		}
	}
	return true
}

// sasUnescape decodes %XX escapes (either hex case). plusIsSpace selects
// query-string semantics ('+' is a space); otherwise '+' stays '+'. It
// reports false on a malformed escape.
func sasUnescape(s string, plusIsSpace bool) (string, bool) {
	if strings.IndexByte(s, '%') < 0 && (!plusIsSpace || strings.IndexByte(s, '+') < 0) {
		return s, true
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == '%':
			v, ok := sasUnhexPair(s, i)
			if !ok {
				return "", false
			}
			b = append(b, v)
			i += 3
		case c == '+' && plusIsSpace:
			b = append(b, ' ')
			i++
		default:
			b = append(b, c)
			i++
		}
	}
	return string(b), true
}

// sasEscape percent-encodes every byte but the RFC 3986 unreserved
// characters, with uppercase hex.
func sasEscape(s string) string {
	const hex = "0123456789ABCDEF"
	n := 0
	for i := 0; i < len(s); i++ {
		if !sasUnreserved(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if sasUnreserved(c) {
			b = append(b, c)
		} else {
			b = append(b, '%', hex[c>>4], hex[c&0x0f])
		}
	}
	return string(b)
}

// sasUnreserved reports whether c is an RFC 3986 unreserved character.
func sasUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// sasUnhexPair decodes the escape "%XX" starting at s[i].
func sasUnhexPair(s string, i int) (byte, bool) {
	if i+2 >= len(s) {
		return 0, false
	}
	hi, ok1 := sasUnhex(s[i+1])
	lo, ok2 := sasUnhex(s[i+2])
	return hi<<4 | lo, ok1 && ok2
}

// sasUnhex decodes one hex digit of either case.
func sasUnhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// sasLower lowercases an ASCII letter and leaves every other byte alone.
func sasLower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// sasClip shortens attacker-supplied text before it goes into an error.
func sasClip(s string) string {
	const max = 16
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
