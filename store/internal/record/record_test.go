package record

import (
	"errors"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/store"
)

func TestETagReadsEveryIfMatchForm(t *testing.T) {
	for in, want := range map[string]string{
		`"12"`:    "12",
		`W/"12"`:  "12",
		` 12 `:    "12",
		`*`:       "*",
		``:        "",
		`"`:       `"`,
		`"a"b"`:   `a"b`,
		`W/12`:    "12",
		`"W/"12"`: `W/"12`,
	} {
		if got := ETag(in); got != want {
			t.Errorf("ETag(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestKeyRefusesWhatCannotBeAKey(t *testing.T) {
	for _, id := range []string{"", strings.Repeat("a", store.MaxIDLength+1), "a\x00b"} {
		if _, err := Key("registration id", id); !errors.Is(err, store.ErrInvalidID) {
			t.Errorf("Key(%q): %v, want store.ErrInvalidID", id, err)
		}
	}
	k, err := Key("registration id", "Device-01")
	if err != nil || k != "device-01" {
		t.Fatalf("Key(Device-01) = %q, %v; want device-01", k, err)
	}
}

func TestCloneDoesNotShare(t *testing.T) {
	in := &store.Registration{RegistrationID: "d1", Payload: []byte(`{"a":1}`)}
	out, err := Clone(in)
	if err != nil {
		t.Fatal(err)
	}
	out.Payload[0] = 'x'
	out.RegistrationID = "d2"
	if in.RegistrationID != "d1" || string(in.Payload) != `{"a":1}` {
		t.Fatalf("Clone shares memory with its input: %+v", in)
	}
}
