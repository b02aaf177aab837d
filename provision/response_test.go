package provision

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEncodeBodyASCII(t *testing.T) {
	st := &RegistrationState{
		RegistrationID: "dev-1",
		Status:         "assigned",
		ErrorMessage:   "café <b> & \u2028 😀 \x00",
		Payload:        json.RawMessage(`{"name":"Zoë","emoji":"😀","cjk":"設備","esc":"\u00e9"}`),
	}
	out, err := EncodeBody(st)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range out {
		if c >= utf8.RuneSelf || c == '\n' {
			t.Fatalf("byte %d of %q is 0x%02x", i, out, c)
		}
	}
	for _, want := range []string{`caf\u00e9`, `\ud83d\ude00`, `Zo\u00eb`, `\u8a2d\u5099`, `\u2028`, `\u0000`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("%s lacks %s", out, want)
		}
	}
	var back RegistrationState
	if err := json.Unmarshal(out, &back); err != nil {
		t.Fatal(err)
	}
	if back.ErrorMessage != st.ErrorMessage {
		t.Errorf("message round trip: %q != %q", back.ErrorMessage, st.ErrorMessage)
	}
	var p map[string]string
	if err := json.Unmarshal(back.Payload, &p); err != nil || p["name"] != "Zoë" || p["emoji"] != "😀" || p["cjk"] != "設備" || p["esc"] != "é" {
		t.Errorf("payload round trip: %v %v", p, err)
	}
}

func TestEncodeBodyInvalidUTF8(t *testing.T) {
	out, err := EncodeBody(&ErrorBody{Message: "bad \xff\xfe byte"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range out {
		if c >= utf8.RuneSelf {
			t.Fatalf("non-ASCII byte in %q", out)
		}
	}
	if !strings.Contains(string(out), `\ufffd`) {
		t.Fatalf("%s: invalid UTF-8 not replaced", out)
	}
}

func TestEncodeBodyShapes(t *testing.T) {
	out, err := EncodeBody(&OperationStatus{OperationID: "4.x", Status: "assigning"})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"operationId":"4.x","status":"assigning"}` {
		t.Fatalf("got %s", out)
	}
	out, err = EncodeBody(&ErrorBody{ErrorCode: 401002, TrackingID: "t", Message: "m", TimestampUTC: "ts"})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"errorCode":401002,"trackingId":"t","message":"m","timestampUtc":"ts"}` {
		t.Fatalf("got %s", out)
	}
}

func TestOperationIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id, err := newOperationID(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !isOperationID(id) || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		seen[id] = true
	}
	for _, bad := range []string{"", "4.", "4.0123", "5.0123456789abcdef0123456789abcdef", "4.0123456789ABCDEF0123456789abcdef", "4.0123456789abcdef0123456789abcdef0"} {
		if isOperationID(bad) {
			t.Errorf("isOperationID(%q) = true", bad)
		}
	}
}
