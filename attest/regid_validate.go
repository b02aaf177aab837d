package attest

// Registration ids (docs/protocol.md section 2).

import (
	"errors"
	"fmt"
)

// MaxRegistrationIDLen is the longest registration id DPS accepts.
const MaxRegistrationIDLen = 128

// ErrInvalidRegistrationID means a registration id breaks the DPS rules. It
// is wrapped with the reason; test with errors.Is.
var ErrInvalidRegistrationID = errors.New("attest: invalid registration id")

// ValidateRegistrationID checks the DPS rules: 1-128 characters of
// a-z A-Z 0-9 and the special characters ':' '.' '_' '-', with no special
// character first or last. Ids are case-insensitive: compare and store them
// through NormalizeRegistrationID.
func ValidateRegistrationID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty", ErrInvalidRegistrationID)
	}
	if len(id) > MaxRegistrationIDLen {
		return fmt.Errorf("%w: %d characters, at most %d allowed",
			ErrInvalidRegistrationID, len(id), MaxRegistrationIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case userIDAlnum(c):
		case userIDSpecial(c):
			if i == 0 || i == len(id)-1 {
				return fmt.Errorf("%w: %q may not be the first or last character",
					ErrInvalidRegistrationID, string(c))
			}
		default:
			return fmt.Errorf("%w: character %q at offset %d is not one of a-z A-Z 0-9 : . _ -",
				ErrInvalidRegistrationID, id[i:i+1], i)
		}
	}
	return nil
}

// NormalizeRegistrationID validates id and returns it lowercased: the form
// used as a store key and for comparisons, since DPS ids are
// case-insensitive. (Group key derivation is the exception: it uses the id
// as the device spells it; see DeriveDeviceKey.)
func NormalizeRegistrationID(id string) (string, error) {
	if err := ValidateRegistrationID(id); err != nil {
		return "", err
	}
	for i := 0; i < len(id); i++ {
		if 'A' <= id[i] && id[i] <= 'Z' {
			b := []byte(id)
			for j := i; j < len(b); j++ {
				b[j] = sasLower(b[j])
			}
			return string(b), nil
		}
	}
	return id, nil
}

// userIDAlnum reports whether c is an ASCII letter or digit.
func userIDAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// userIDSpecial reports whether c is one of the special characters allowed
// inside a registration id.
func userIDSpecial(c byte) bool {
	return c == ':' || c == '.' || c == '_' || c == '-'
}
