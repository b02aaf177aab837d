package device

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseResponseTopic(t *testing.T) {
	good := []struct {
		topic    string
		status   int
		rid      string
		retry    time.Duration
		hasRetry bool
	}{
		{"$dps/registrations/res/202/?$rid=1&retry-after=3", 202, "1", 3 * time.Second, true},
		{"$dps/registrations/res/200/?$rid=42", 200, "42", 0, false},
		{"$dps/registrations/res/401/?$rid=abc-DEF", 401, "abc-DEF", 0, false},
		{"$dps/registrations/res/202?$rid=7&retry-after=0", 202, "7", 0, true},
		{"$dps/registrations/res/429/?retry-after=10&$rid=9&extra=x", 429, "9", 10 * time.Second, true},
		{"$dps/registrations/res/500/?$rid=%7Bx%7D", 500, "%7Bx%7D", 0, false}, // rid kept verbatim
		{"$dps/registrations/res/202/?$rid=1&retry-after=999999999", 202, "1", maxRetryAfter, true},
	}
	for _, g := range good {
		rt, err := parseResponseTopic(g.topic)
		if err != nil {
			t.Errorf("%q: %v", g.topic, err)
			continue
		}
		if rt.Status != g.status || rt.RID != g.rid || rt.RetryAfter != g.retry || rt.HasRetryAfter != g.hasRetry {
			t.Errorf("%q: got %+v", g.topic, rt)
		}
	}
	bad := []string{
		"",
		"$dps/registrations/res/",
		"$dps/registrations/res/202/",
		"$dps/registrations/res/202/?retry-after=1",
		"$dps/registrations/res/20/?$rid=1",
		"$dps/registrations/res/2021/?$rid=1",
		"$dps/registrations/res/abc/?$rid=1",
		"$dps/registrations/res/099/?$rid=1",
		"$dps/registrations/res/202/?$rid=",
		"$dps/registrations/res/202/?$rid=1&$rid=2",
		"$dps/registrations/res/202/?$rid=1&retry-after=",
		"$dps/registrations/res/202/?$rid=1&retry-after=-1",
		"$dps/registrations/res/202/?$rid=1&retry-after=1.5",
		"$dps/registrations/res/202/?$rid=1&retry-after=1234567890",
		"$dps/registrations/PUT/iotdps-register/?$rid=1",
		"devices/x/messages/devicebound/?$rid=1",
	}
	for _, b := range bad {
		if _, err := parseResponseTopic(b); !errors.Is(err, ErrProtocol) {
			t.Errorf("%q: err = %v, want ErrProtocol", b, err)
		}
	}
}

func TestRequestTopics(t *testing.T) {
	if got, want := registerTopic("5"), "$dps/registrations/PUT/iotdps-register/?$rid=5"; got != want {
		t.Errorf("registerTopic = %q, want %q", got, want)
	}
	if got, want := pollTopic("6", "4.abc.def-1"), "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=6&operationId=4.abc.def-1"; got != want {
		t.Errorf("pollTopic = %q, want %q", got, want)
	}
	// An operationId from the network must not inject wildcards or parameters.
	got := pollTopic("1", "a+b#c&x=y")
	if strings.ContainsAny(got[len(pollPrefix):], "+#") || strings.Count(got, "&") != 1 {
		t.Errorf("pollTopic did not escape the operation id: %q", got)
	}
}

// FuzzParseResponseTopic checks that the parser of broker topics never
// panics and that what it accepts is consistent.
func FuzzParseResponseTopic(f *testing.F) {
	f.Add("$dps/registrations/res/202/?$rid=1&retry-after=3")
	f.Add("$dps/registrations/res/401/?$rid=abc")
	f.Add("$dps/registrations/res/200?$rid=1&$rid=2")
	f.Fuzz(func(t *testing.T, topic string) {
		rt, err := parseResponseTopic(topic)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is not ErrProtocol", err)
			}
			return
		}
		if rt.Status < 100 || rt.Status > 999 || rt.RID == "" || rt.RetryAfter < 0 || rt.RetryAfter > maxRetryAfter {
			t.Fatalf("accepted %q as %+v", topic, rt)
		}
		if !strings.Contains(topic, "$rid="+rt.RID) {
			t.Fatalf("rid %q not verbatim in %q", rt.RID, topic)
		}
	})
}

// FuzzParseOperation checks that answer bodies from the network never panic
// the decoders.
func FuzzParseOperation(f *testing.F) {
	f.Add([]byte(`{"operationId":"x","status":"assigned","registrationState":{"registrationId":"r","assignedHub":"h","deviceId":"d","status":"assigned","errorCode":0,"tpm":{"authenticationKey":"AAA="}}}`))
	f.Add([]byte(`{"errorCode":"401002","trackingId":"t","message":"m","authenticationKey":"AA==","keyName":"k"}`))
	f.Add([]byte(`{"registrationState":null}`))
	f.Add([]byte(` `))
	f.Fuzz(func(t *testing.T, body []byte) {
		op, st, err := parseOperation(body)
		if err != nil && !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v is not ErrProtocol", err)
		}
		_, _ = op, st
		e := parseError(body)
		if e.ErrorCode < 0 {
			t.Fatalf("negative errorCode %d", e.ErrorCode)
		}
	})
}
