package hooks

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

func TestParseRequestTopic(t *testing.T) {
	uuid := "0f8fad5b-d9cb-469f-a165-70867728950e"
	good := []struct {
		topic string
		want  RequestTopic
	}{
		{"$dps/registrations/PUT/iotdps-register/?$rid=1", RequestTopic{KindRegister, "1", ""}},
		{"$dps/registrations/PUT/iotdps-register/?$rid=" + uuid, RequestTopic{KindRegister, uuid, ""}},
		{"$dps/registrations/PUT/iotdps-register/?$rid=1700000000123456789", RequestTopic{KindRegister, "1700000000123456789", ""}},
		{"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.abc.def", RequestTopic{KindPoll, "2", "4.abc.def"}},
		{"$dps/registrations/GET/iotdps-get-operationstatus/?operationId=op&$rid=x", RequestTopic{KindPoll, "x", "op"}},
		{"$dps/registrations/PUT/iotdps-register/?$rid=7&api-version=2019-03-31", RequestTopic{KindRegister, "7", ""}},
	}
	for _, g := range good {
		got, err := ParseRequestTopic(g.topic)
		if err != nil || got != g.want {
			t.Errorf("%q: got %+v, %v; want %+v", g.topic, got, err, g.want)
		}
	}
	bad := []string{
		"",
		"$dps/registrations/res/#",
		"$dps/registrations/PUT/iotdps-register/",
		"$dps/registrations/PUT/iotdps-register/?",
		"$dps/registrations/PUT/iotdps-register/?$rid=",
		"$dps/registrations/PUT/iotdps-register/?$rid=1&$rid=2",
		"$dps/registrations/PUT/iotdps-register/?$rid=a#",
		"$dps/registrations/PUT/iotdps-register/?$rid=a+b",
		"$dps/registrations/PUT/iotdps-register/?$rid=a/b",
		"$dps/registrations/PUT/iotdps-register/?$rid=a b",
		"$dps/registrations/PUT/iotdps-register/?$rid=é",
		"$dps/registrations/PUT/iotdps-register/?$rid=" + strings.Repeat("1", MaxRIDLength+1),
		"$dps/registrations/PUT/iotdps-register/?$rid=1&operationId=x",
		"$dps/registrations/PUT/iotdps-register/?$rid=1&&",
		"$dps/registrations/PUT/iotdps-register/?$rid=1&x",
		"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1",
		"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=",
		"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=a&operationId=b",
		"$DPS/registrations/PUT/iotdps-register/?$rid=1",
		"devices/x/messages/events/",
		"$dps/registrations/PUT/iotdps-register/?$rid=1" + strings.Repeat("&a=b", maxTopicParams),
	}
	for _, b := range bad {
		if got, err := ParseRequestTopic(b); !errors.Is(err, ErrBadTopic) {
			t.Errorf("%q: got %+v, %v; want ErrBadTopic", b, got, err)
		}
	}
}

func TestResponseTopic(t *testing.T) {
	cases := []struct {
		status int
		rid    string
		ra     time.Duration
		want   string
	}{
		{202, "1", 3 * time.Second, "$dps/registrations/res/202/?$rid=1&retry-after=3"},
		{202, "1", 0, "$dps/registrations/res/202/?$rid=1&retry-after=0"},
		{202, "1", 1500 * time.Millisecond, "$dps/registrations/res/202/?$rid=1&retry-after=2"},
		{200, "abc", -1, "$dps/registrations/res/200/?$rid=abc"},
	}
	for _, c := range cases {
		if got := ResponseTopic(c.status, c.rid, c.ra); got != c.want {
			t.Errorf("got %q want %q", got, c.want)
		}
	}
}

// FuzzParseRequestTopic checks that the parser never panics, that whatever it
// accepts yields a valid response topic (no wildcards, ASCII) and that the
// $rid round-trips into it.
func FuzzParseRequestTopic(f *testing.F) {
	f.Add("$dps/registrations/PUT/iotdps-register/?$rid=1")
	f.Add("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.a.b")
	f.Fuzz(func(t *testing.T, topic string) {
		rt, err := ParseRequestTopic(topic)
		if err != nil {
			if !errors.Is(err, ErrBadTopic) {
				t.Fatalf("error %v does not wrap ErrBadTopic", err)
			}
			return
		}
		if rt.RID == "" || len(rt.RID) > MaxRIDLength {
			t.Fatalf("accepted bad rid %q", rt.RID)
		}
		if rt.Kind == KindPoll && rt.OperationID == "" {
			t.Fatal("poll without operationId")
		}
		resp := ResponseTopic(200, rt.RID, time.Second)
		if strings.ContainsAny(resp, "#+\x00") || !utf8.ValidString(resp) {
			t.Fatalf("bad response topic %q", resp)
		}
		if !strings.Contains(resp, "?$rid="+rt.RID+"&") {
			t.Fatalf("rid not echoed verbatim in %q", resp)
		}
	})
}

// TestResponseFilterAllowed: filters within $dps/registrations/res/ are
// allowed, whatever their wildcards; none that can match another topic is.
func TestResponseFilterAllowed(t *testing.T) {
	for filter, want := range map[string]bool{
		ResponseFilter:                                     true,
		"$dps/registrations/res/202/?$rid=1":               true,
		"$dps/registrations/res/200/?$rid=1&retry-after=3": true,
		"$dps/registrations/res/+/?$rid=1":                 true,
		"$dps/registrations/res/+/#":                       true,
		"$dps/registrations/res/+":                         true,
		"$dps/registrations/res/":                          true,
		"$dps/registrations/res/200/#":                     true,
		"#":                                                false,
		"+":                                                false,
		"$dps/#":                                           false,
		"$dps/registrations/#":                             false,
		"$dps/registrations/+/200/#":                       false,
		"$dps/registrations/res":                           false,
		"$dps/registrations/res#":                          false,
		"$dps/registrations/res+/x":                        false,
		"$dps/registrations/PUT/iotdps-register/?$rid=1":                 false,
		"$share/g/$dps/registrations/res/#":                              false,
		"$DPS/registrations/res/#":                                       false,
		"$dps/registrations/res/#/x":                                     false,
		"$dps/registrations/res/20#":                                     false,
		"$dps/registrations/res/2+/x":                                    false,
		"$dps/registrations/res/a\x00b":                                  false,
		"$dps/registrations/res/\xff":                                    false,
		"devices/x/messages/devicebound/#":                               false,
		"$dps/registrations/res/" + strings.Repeat("a", maxFilterLength): false,
		"": false,
	} {
		if got := ResponseFilterAllowed(filter); got != want {
			t.Errorf("ResponseFilterAllowed(%q) = %v, want %v", filter, got, want)
		}
	}
}

// FuzzResponseFilterAllowed: no allowed filter matches, by mochi's own
// topic matching, any topic outside the response topics.
func FuzzResponseFilterAllowed(f *testing.F) {
	for _, s := range [][2]string{
		{ResponseFilter, "$dps/registrations/res/200/?$rid=1"},
		{"$dps/registrations/res/+/?$rid=1", "$dps/registrations/PUT/iotdps-register/?$rid=1"},
		{"$dps/registrations/res/#", "$dps/registrations/res"},
		{"#", "a/b"},
		{"$dps/registrations/+/#", "$dps/registrations/GET/x"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		if !ResponseFilterAllowed(filter) {
			return
		}
		if !strings.HasPrefix(filter, responsePrefix) {
			t.Fatalf("allowed %q outside the prefix", filter)
		}
		if !mqtt.IsValidFilter(filter, false) || !mqtt.IsValidFilter(topic, true) {
			return // mochi refuses the filter before the ACL, or no one can publish the topic
		}
		idx := mqtt.NewTopicsIndex()
		idx.Subscribe("c", packets.Subscription{Filter: filter})
		if len(idx.Subscribers(topic).Subscriptions) > 0 && !strings.HasPrefix(topic, "$dps/registrations/res") {
			t.Fatalf("allowed filter %q matches %q", filter, topic)
		}
	})
}
