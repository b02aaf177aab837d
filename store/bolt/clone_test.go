package bolt

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/internal/record"
	"github.com/tpmdps/dpsd/store/storetest"
)

// sameClone checks that cloneRegistration(r) equals the JSON round trip
// record.Clone(r) it replaces, errors included, and leaves r unshared.
func sameClone(t *testing.T, r *store.Registration) {
	t.Helper()
	want, wantErr := record.Clone(r)
	got, err := cloneRegistration(r)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("%+v: cloneRegistration error %v, round trip error %v", r, err, wantErr)
	}
	if err != nil {
		if !errors.Is(err, store.ErrInvalidRecord) {
			t.Fatalf("%+v: error %v is not store.ErrInvalidRecord", r, err)
		}
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("cloneRegistration differs from the round trip:\n got %#v\nwant %#v", got, want)
	}
	if len(got.Payload) > 0 && len(r.Payload) > 0 && &got.Payload[0] == &r.Payload[0] {
		t.Fatal("clone shares the caller's payload")
	}
}

func TestCloneRegistrationMatchesJSON(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 5, time.UTC)
	full := storetest.FullRegistration("Dev-1", "Grp")
	full.ETag, full.CreatedAt, full.UpdatedAt = "etag", at, at
	for _, r := range []*store.Registration{
		full,
		{RegistrationID: "r"},
		{RegistrationID: "r", Payload: json.RawMessage{}},
		{RegistrationID: "r", Payload: json.RawMessage("null")},
		{RegistrationID: "r", Payload: json.RawMessage(" { \"a\" : [1, 2,\n3], \"h\": \"<&>\u2028\" } ")},
		{RegistrationID: "r", Payload: json.RawMessage(`"s"`)},
		{RegistrationID: "r", Payload: json.RawMessage(`{bad`)},
		{RegistrationID: "r", Payload: json.RawMessage(`{} {}`)},
		{RegistrationID: "r<&>\u2028", ErrorMessage: "quote \" and \\ and \x01"},
		{RegistrationID: "bad-\xff-utf8", Substatus: "\xc3"},
		{RegistrationID: "r", HubKey: []byte("secret"), ErrorCode: -7},
	} {
		sameClone(t, r)
	}
}

// FuzzCloneRegistration compares cloneRegistration with the JSON round trip
// on arbitrary strings and payloads (the payload is device input).
func FuzzCloneRegistration(f *testing.F) {
	f.Add("dev-1", "msg", []byte(`{"a":1}`), 0)
	f.Add("Dev\xff", "<&>", []byte(` [1, "\u2028"] `), 400209)
	f.Add("", "", []byte(`{bad`), -1)
	f.Add("r", "\x00", []byte("null"), 1)
	f.Fuzz(func(t *testing.T, id, msg string, payload []byte, code int) {
		sameClone(t, &store.Registration{RegistrationID: id, ErrorMessage: msg, Payload: payload, ErrorCode: code,
			Status: store.RegistrationAssigned, EnrollmentGroupID: msg, HubKey: payload})
	})
}
