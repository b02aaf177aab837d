package attest

// The DPS MQTT CONNECT username (docs/protocol.md section 2):
//
//	{idScope}/registrations/{registrationId}/api-version={v}[&ClientVersion={agent}][&k=v...]
//
// The username is split on its first three '/'; what follows the third is a
// query string, so '/' may appear in it. Rules:
//   - The username is at most MaxUsernameLen bytes of printable ASCII with no
//     spaces (values are percent-encoded).
//   - "registrations" is literal and lowercase. The scope passes
//     ValidateIDScope, the id ValidateRegistrationID (it is not
//     percent-decoded: no valid id needs escaping).
//   - Parameters are k=v pairs split on '&' and on the first '='. Keys are
//     1-64 characters of A-Z a-z 0-9 - . _ ~ and are compared ignoring ASCII
//     case; a key may appear once. Values are percent-decoded with
//     query-string rules ('+' is a space) and must decode to valid UTF-8
//     without control characters. Empty parameters ("&&"), parameters with
//     no '=', and more than usernameMaxParams parameters are malformed.
//   - api-version is required, non-empty, and passes ValidateAPIVersion.

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxUsernameLen bounds the username accepted by ParseUsername. The longest
// legitimate one (128-character id plus a long ClientVersion) is well under.
const MaxUsernameLen = 2048

const (
	usernameMaxParams  = 16 // k=v pairs after the third '/'
	usernameMaxKeyLen  = 64
	usernameMaxScope   = 64
	usernameRegLiteral = "registrations"
)

// Errors returned by ParseUsername and the validators it uses. Each is
// wrapped with the reason; test with errors.Is.
var (
	// ErrUsernameMalformed means the username does not have the DPS shape.
	ErrUsernameMalformed = errors.New("attest: malformed MQTT username")
	// ErrInvalidIDScope means the id scope is empty or has bad characters.
	ErrInvalidIDScope = errors.New("attest: invalid id scope")
	// ErrInvalidAPIVersion means api-version is missing or not a DPS version.
	ErrInvalidAPIVersion = errors.New("attest: invalid api-version")
)

// Username is a parsed DPS MQTT CONNECT username.
type Username struct {
	IDScope        string
	RegistrationID string // as sent, not lowercased
	APIVersion     string
	ClientVersion  string // percent-decoded; "" when absent
	// Params holds the parameters other than api-version and ClientVersion,
	// in the order sent, with values percent-decoded. nil when there are none.
	Params []UsernameParam
}

// UsernameParam is one extra k=v parameter of a username.
type UsernameParam struct {
	Key   string
	Value string // percent-decoded
}

// ParseUsername parses "{idScope}/registrations/{registrationId}/
// api-version={v}[&ClientVersion={agent}][&k=v...]" strictly (rules at the
// top of username.go). Errors wrap ErrUsernameMalformed, ErrInvalidIDScope,
// ErrInvalidRegistrationID or ErrInvalidAPIVersion.
func ParseUsername(s string) (Username, error) {
	if len(s) > MaxUsernameLen {
		return Username{}, fmt.Errorf("%w: longer than %d bytes", ErrUsernameMalformed, MaxUsernameLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f {
			return Username{}, fmt.Errorf("%w: space, control or non-ASCII byte at offset %d",
				ErrUsernameMalformed, i)
		}
	}
	scope, rest, ok1 := strings.Cut(s, "/")
	literal, rest, ok2 := strings.Cut(rest, "/")
	regID, query, ok3 := strings.Cut(rest, "/")
	if !ok1 || !ok2 || !ok3 {
		return Username{}, fmt.Errorf("%w: want {idScope}/registrations/{registrationId}/api-version={v}",
			ErrUsernameMalformed)
	}
	if literal != usernameRegLiteral {
		return Username{}, fmt.Errorf("%w: second segment is not %q", ErrUsernameMalformed, usernameRegLiteral)
	}
	if err := ValidateIDScope(scope); err != nil {
		return Username{}, err
	}
	if err := ValidateRegistrationID(regID); err != nil {
		return Username{}, err
	}
	u := Username{IDScope: scope, RegistrationID: regID}
	if err := u.parseQuery(query); err != nil {
		return Username{}, err
	}
	return u, nil
}

// parseQuery fills the parameters of u from the text after the third '/'.
func (u *Username) parseQuery(query string) error {
	if query == "" {
		return fmt.Errorf("%w: missing (nothing after the registration id)", ErrInvalidAPIVersion)
	}
	var haveAPI, haveClient bool
	count := 0
	for rest, more := query, true; more; {
		var field string
		field, rest, more = strings.Cut(rest, "&")
		count++
		if count > usernameMaxParams {
			return fmt.Errorf("%w: more than %d parameters", ErrUsernameMalformed, usernameMaxParams)
		}
		if field == "" {
			return fmt.Errorf("%w: empty parameter", ErrUsernameMalformed)
		}
		key, raw, ok := strings.Cut(field, "=")
		if !ok {
			return fmt.Errorf("%w: parameter %q has no '='", ErrUsernameMalformed, sasClip(key))
		}
		if !userValidKey(key) {
			return fmt.Errorf("%w: parameter name %q is not 1-%d characters of A-Z a-z 0-9 - . _ ~",
				ErrUsernameMalformed, sasClip(key), usernameMaxKeyLen)
		}
		value, ok := sasUnescape(raw, true)
		if !ok {
			return fmt.Errorf("%w: parameter %s has an invalid percent-escape", ErrUsernameMalformed, key)
		}
		if !userValidValue(value) {
			return fmt.Errorf("%w: parameter %s is not UTF-8 text without control characters",
				ErrUsernameMalformed, key)
		}
		switch {
		case strings.EqualFold(key, "api-version"):
			if haveAPI {
				return fmt.Errorf("%w: api-version given twice", ErrUsernameMalformed)
			}
			haveAPI = true
			u.APIVersion = value
		case strings.EqualFold(key, "ClientVersion"):
			if haveClient {
				return fmt.Errorf("%w: ClientVersion given twice", ErrUsernameMalformed)
			}
			haveClient = true
			u.ClientVersion = value
		default:
			for _, p := range u.Params {
				if strings.EqualFold(p.Key, key) {
					return fmt.Errorf("%w: parameter %s given twice", ErrUsernameMalformed, key)
				}
			}
			u.Params = append(u.Params, UsernameParam{Key: key, Value: value})
		}
	}
	if !haveAPI {
		return fmt.Errorf("%w: missing", ErrInvalidAPIVersion)
	}
	return ValidateAPIVersion(u.APIVersion)
}

// String formats u back into a username: api-version first, then
// ClientVersion when not empty, then Params, values percent-encoded.
// ParseUsername(u.String()) gives u back for any u that ParseUsername
// returned.
func (u Username) String() string {
	var b strings.Builder
	b.WriteString(u.IDScope)
	b.WriteString("/" + usernameRegLiteral + "/")
	b.WriteString(u.RegistrationID)
	b.WriteString("/api-version=")
	b.WriteString(sasEscape(u.APIVersion))
	if u.ClientVersion != "" {
		b.WriteString("&ClientVersion=")
		b.WriteString(sasEscape(u.ClientVersion))
	}
	for _, p := range u.Params {
		b.WriteString("&")
		b.WriteString(p.Key)
		b.WriteString("=")
		b.WriteString(sasEscape(p.Value))
	}
	return b.String()
}

// ValidateIDScope checks an id scope: 1-64 characters of A-Z a-z 0-9 - . _
// (Azure's look like "0ne00000A0A"). The broker compares the scope of each
// username with its own, and the SAS resource embeds it.
func ValidateIDScope(scope string) error {
	if scope == "" || len(scope) > usernameMaxScope {
		return fmt.Errorf("%w: not 1-%d characters", ErrInvalidIDScope, usernameMaxScope)
	}
	for i := 0; i < len(scope); i++ {
		if c := scope[i]; !userIDAlnum(c) && c != '-' && c != '.' && c != '_' {
			return fmt.Errorf("%w: character %q at offset %d is not one of A-Z a-z 0-9 - . _",
				ErrInvalidIDScope, scope[i:i+1], i)
		}
	}
	return nil
}

// ValidateAPIVersion accepts every DPS api-version seen in the field
// (IsKnownAPIVersion) and, so that a new SDK release is not locked out, any
// other well-formed "yyyy-mm-dd" or "yyyy-mm-dd-preview" that is a real
// calendar date no earlier than 2017-11-15, the first DPS version. The
// version does not change what the broker answers.
func ValidateAPIVersion(v string) error {
	if v == "" {
		return fmt.Errorf("%w: empty", ErrInvalidAPIVersion)
	}
	if IsKnownAPIVersion(v) {
		return nil
	}
	date := strings.TrimSuffix(v, "-preview")
	if len(date) != len("2006-01-02") {
		return fmt.Errorf("%w: %q is not yyyy-mm-dd[-preview]", ErrInvalidAPIVersion, sasClip(v))
	}
	t, err := time.Parse(time.DateOnly, date)
	if err != nil {
		return fmt.Errorf("%w: %q is not yyyy-mm-dd[-preview]", ErrInvalidAPIVersion, sasClip(v))
	}
	if t.Before(time.Date(2017, time.November, 15, 0, 0, 0, 0, time.UTC)) {
		return fmt.Errorf("%w: %q predates DPS (2017-11-15)", ErrInvalidAPIVersion, v)
	}
	return nil
}

// IsKnownAPIVersion reports whether v is one of the DPS api-versions that
// the stock clients are known to send (docs/protocol.md section 2).
func IsKnownAPIVersion(v string) bool {
	switch v {
	case "2017-11-15", "2018-09-01-preview", "2019-03-31", "2021-06-01",
		"2021-10-01", "2021-11-01-preview", "2025-07-01-preview":
		return true
	}
	return false
}

// userValidKey reports whether k is 1-64 unreserved characters.
func userValidKey(k string) bool {
	if k == "" || len(k) > usernameMaxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if !sasUnreserved(k[i]) {
			return false
		}
	}
	return true
}

// userValidValue reports whether a decoded value is UTF-8 text without
// control characters (nothing that could forge a log line).
func userValidValue(v string) bool {
	if !utf8.ValidString(v) {
		return false
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}
