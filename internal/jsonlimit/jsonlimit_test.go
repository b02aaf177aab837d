package jsonlimit

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestCheckDepth(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		max  int
		ok   bool
	}{
		{"empty", "", 0, true},
		{"scalar at zero", `"x"`, 0, true},
		{"object at zero", `{}`, 0, false},
		{"exactly max", strings.Repeat("[", 4) + strings.Repeat("]", 4), 4, true},
		{"one over", strings.Repeat("[", 5) + strings.Repeat("]", 5), 4, false},
		{"siblings do not add up", `[[1],[2],{"a":3}]`, 2, true},
		{"brackets in strings", `{"a":"[[[[{{{{"}`, 1, true},
		{"escaped quote keeps the string open", `{"a":"\"[[[["}`, 1, true},
		{"escaped backslash closes the string", `{"a":"\\","b":[[1]]}`, 2, false},
		{"unterminated text still counted", `[[[[`, 3, false},
		{"closers first do not underflow into a pass", `]]]][[[[[`, 4, true},
	} {
		err := CheckDepth([]byte(tc.in), tc.max)
		if tc.ok && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if !tc.ok {
			var de *DepthError
			if !errors.Is(err, ErrTooDeep) || !errors.As(err, &de) || de.Max != tc.max {
				t.Errorf("%s: err = %v, want a *DepthError{Max: %d} matching ErrTooDeep", tc.name, err, tc.max)
			}
		}
	}
}

func TestDepthErrorText(t *testing.T) {
	// package api shows this text to callers of the service API.
	if got, want := CheckDepth([]byte("[[["), 2).Error(), "JSON nested deeper than 2 levels"; got != want {
		t.Fatalf("error text %q, want %q", got, want)
	}
}

// decodedDepth is the nesting depth of valid JSON as encoding/json sees it.
func decodedDepth(t *testing.T, data []byte) int {
	dec := json.NewDecoder(bytes.NewReader(data))
	depth, deepest := 0, 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return deepest
		}
		if err != nil {
			t.Fatalf("token of valid JSON: %v", err)
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '[', '{':
				depth++
				deepest = max(deepest, depth)
			default:
				depth--
			}
		}
	}
}

func FuzzCheckDepth(f *testing.F) {
	for _, s := range []string{``, `{}`, `[[1,[2]],{"a":{"b":[]}}]`, `{"a":"\"}]["}`, `"\\"`, `[[[[`, `]]][[[`, `{"x":"\u005b"}`} {
		f.Add([]byte(s), 2)
	}
	f.Fuzz(func(t *testing.T, data []byte, limit int) {
		limit = ((limit % 64) + 64) % 64
		err := CheckDepth(data, limit)
		if err != nil && !errors.Is(err, ErrTooDeep) {
			t.Fatalf("error does not match ErrTooDeep: %v", err)
		}
		// A tighter limit never accepts what a looser one refused.
		if err != nil && limit > 0 && CheckDepth(data, limit-1) == nil {
			t.Fatalf("refused at %d but accepted at %d", limit, limit-1)
		}
		if json.Valid(data) {
			if d := decodedDepth(t, data); (d > limit) != (err != nil) {
				t.Fatalf("decoded depth %d, limit %d, CheckDepth err %v", d, limit, err)
			}
		}
	})
}
