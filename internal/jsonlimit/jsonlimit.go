// Package jsonlimit bounds untrusted JSON before it reaches encoding/json:
// the decoder recurses once per nesting level, so a small body of brackets
// could otherwise cost a deep stack. Both the service API (package api) and
// the device protocol (package provision) check bodies with it.
package jsonlimit

import (
	"errors"
	"fmt"
)

// ErrTooDeep means arrays and objects nest deeper than the allowed limit.
var ErrTooDeep = errors.New("JSON nested too deeply")

// DepthError is the error of CheckDepth: the text nests deeper than Max.
// It matches ErrTooDeep with errors.Is.
type DepthError struct {
	// Max is the limit that was exceeded.
	Max int
}

// Error says which limit was exceeded.
func (e *DepthError) Error() string {
	return fmt.Sprintf("JSON nested deeper than %d levels", e.Max)
}

// Is makes errors.Is(err, ErrTooDeep) true.
func (e *DepthError) Is(target error) bool { return target == ErrTooDeep }

// CheckDepth scans JSON text, valid or not, and returns a *DepthError when
// arrays and objects nest deeper than max levels; brackets inside strings
// (escapes included) do not count. It does not validate the JSON: the
// decoder that runs after it does. It runs in one pass without allocating.
func CheckDepth(data []byte, max int) error {
	depth := 0
	inString, escaped := false, false
	for _, c := range data {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > max {
				return &DepthError{Max: max}
			}
		case '}', ']':
			depth--
		}
	}
	return nil
}
