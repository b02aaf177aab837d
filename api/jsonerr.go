package api

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"strings"
	"time"
)

// Bodies and query strings are untrusted input: their errors are answered
// in the API's own words, naming the JSON field path, the expected JSON type
// or the byte offset, never a Go type or field (encoding/json's messages
// name both, e.g. "Go struct field enrollmentIn.Enrollment.registrationId").

// jsonError is the 400 for body bytes (named by what, e.g. "enrollment")
// that did not decode.
func jsonError(what string, err error) *apiError {
	return &apiError{code: codeMalformedJSON, msg: "malformed " + what + " JSON: " + describeJSONError(err), err: err}
}

// describeJSONError says what is wrong with a JSON text that failed to
// decode, in terms of the JSON alone.
func describeJSONError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var tpe *time.ParseError
	var b64 base64.CorruptInputError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("%s (at byte %d)", syn.Error(), syn.Offset)
	case errors.As(err, &typ):
		found := jsonValueKind(typ.Value)
		path := jsonPath(typ.Field)
		if path == "" {
			return fmt.Sprintf("expected %s, found %s", jsonTypeName(typ.Type), found)
		}
		return fmt.Sprintf("%s: expected %s, found %s (at byte %d)", path, jsonTypeName(typ.Type), found, typ.Offset)
	case errors.As(err, &tpe), strings.HasPrefix(err.Error(), "Time.UnmarshalJSON"):
		return "a date-time is not an RFC 3339 string such as \"2026-01-02T15:04:05Z\""
	case errors.As(err, &b64):
		return fmt.Sprintf("a base64 value is malformed (at its byte %d)", int64(b64))
	}
	return "a value has the wrong type or form"
}

// jsonPath turns the Field of a json.UnmarshalTypeError ("Enrollment.attestation.type")
// into the JSON path ("attestation.type"): segments naming embedded Go
// structs (the only ones that start with a capital letter; every JSON name
// of the DPS API starts in lower case) are dropped.
func jsonPath(field string) string {
	var keep []string
	for _, seg := range strings.Split(field, ".") {
		if seg == "" || seg[0] >= 'A' && seg[0] <= 'Z' {
			continue
		}
		keep = append(keep, seg)
	}
	return strings.Join(keep, ".")
}

// jsonTypeName names the JSON form that decodes into t.
func jsonTypeName(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "an integer in range"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return "a base64 string"
		}
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "another JSON value"
}

// jsonValueKind names the JSON value encoding/json found ("number",
// "number 1.5", "string", "bool", "array", "object").
func jsonValueKind(v string) string {
	kind, literal, _ := strings.Cut(v, " ")
	switch kind {
	case "number":
		if literal != "" {
			return "the number " + literal
		}
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "array":
		return "an array"
	case "object":
		return "an object"
	}
	return "another JSON value"
}

// parseQuery parses the raw query string of a request. net/http lets
// malformed percent-escapes in the query through and url.Values silently
// drops the pairs holding them; the API refuses them instead.
func parseQuery(raw string) (url.Values, error) {
	q, err := url.ParseQuery(raw)
	if err != nil {
		var esc url.EscapeError
		if errors.As(err, &esc) {
			return nil, &apiError{code: codeBadRequest, msg: fmt.Sprintf("malformed query string: %q is not a valid percent-escape", string(esc)), err: err}
		}
		return nil, &apiError{code: codeBadRequest, msg: "malformed query string: separate parameters with &", err: err}
	}
	return q, nil
}

// plain is err's message without the "attest: " prefix of that package's
// errors: answers speak of the request, not of the code.
func plain(err error) string {
	return strings.TrimPrefix(err.Error(), "attest: ")
}
