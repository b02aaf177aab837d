package loadgen

import (
	"testing"
	"time"
)

func TestParseResponseTopic(t *testing.T) {
	a, rid, err := parseResponseTopic("$dps/registrations/res/202/?$rid=7&retry-after=3")
	if err != nil || rid != "7" || a.status != 202 || a.retryAfter != 3*time.Second {
		t.Fatalf("got %+v %q %v", a, rid, err)
	}
	a, rid, err = parseResponseTopic("$dps/registrations/res/200/?$rid=abc")
	if err != nil || rid != "abc" || a.status != 200 || a.retryAfter != -1 {
		t.Fatalf("got %+v %q %v", a, rid, err)
	}
	for _, bad := range []string{"", "other/topic", "$dps/registrations/res/xx/?$rid=1", "$dps/registrations/res/200"} {
		if _, _, err := parseResponseTopic(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

// FuzzParseResponseTopic: response topics come from the network.
func FuzzParseResponseTopic(f *testing.F) {
	f.Add("$dps/registrations/res/202/?$rid=7&retry-after=3")
	f.Add("$dps/registrations/res/401/?$rid=1")
	f.Add("$dps/registrations/res/-1/?retry-after=-5&$rid=")
	f.Fuzz(func(t *testing.T, topic string) {
		a, _, err := parseResponseTopic(topic)
		if err == nil && a.retryAfter < -1 {
			t.Fatalf("negative retry-after %v from %q", a.retryAfter, topic)
		}
	})
}
