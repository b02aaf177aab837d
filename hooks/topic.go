package hooks

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// DPS topics (docs/protocol.md section 3).
const (
	// ResponseFilter is the filter devices subscribe to; any filter within
	// it is allowed too (ResponseFilterAllowed).
	ResponseFilter = "$dps/registrations/res/#"
	// RegisterTopicPrefix starts a register request topic; the query follows.
	RegisterTopicPrefix = "$dps/registrations/PUT/iotdps-register/?"
	// PollTopicPrefix starts an operation status request topic; the query follows.
	PollTopicPrefix = "$dps/registrations/GET/iotdps-get-operationstatus/?"
	// responsePrefix starts every response topic.
	responsePrefix = "$dps/registrations/res/"
)

// Bounds of request topic parameters.
const (
	// MaxRIDLength bounds $rid (UUIDs are 36 characters, Unix nanoseconds 19).
	MaxRIDLength = 128
	// MaxOperationIDLength bounds operationId.
	MaxOperationIDLength = 256
	// maxTopicParams bounds the query parameters of a request topic.
	maxTopicParams = 8
)

// ErrBadTopic: a publish topic is not a DPS request topic. The connection
// that published it is closed.
var ErrBadTopic = errors.New("hooks: not a DPS request topic")

// RequestKind says which request a topic carries.
type RequestKind int

// Request kinds.
const (
	KindRegister RequestKind = iota + 1 // PUT iotdps-register
	KindPoll                            // GET iotdps-get-operationstatus
)

// String names the kind for logs.
func (k RequestKind) String() string {
	switch k {
	case KindRegister:
		return "register"
	case KindPoll:
		return "poll"
	}
	return "unknown"
}

// RequestTopic is a parsed request topic. RID is echoed verbatim in the
// response topic; OperationID is passed verbatim to the service.
type RequestTopic struct {
	Kind        RequestKind
	RID         string
	OperationID string // poll only
}

// ParseRequestTopic parses a register or poll request topic strictly: the
// exact path prefix, then `&`-separated `key=value` parameters with `$rid`
// exactly once (1..MaxRIDLength characters) and, for a poll, `operationId`
// exactly once. Values are taken verbatim (they are opaque and echoed) and
// may only hold printable ASCII other than `&`, `=`, `#`, `+` and `/`, so a
// response topic built from them is a valid MQTT topic name. Other well-formed
// parameters are ignored. Errors wrap ErrBadTopic.
func ParseRequestTopic(topic string) (RequestTopic, error) {
	var rt RequestTopic
	var query string
	switch {
	case strings.HasPrefix(topic, RegisterTopicPrefix):
		rt.Kind, query = KindRegister, topic[len(RegisterTopicPrefix):]
	case strings.HasPrefix(topic, PollTopicPrefix):
		rt.Kind, query = KindPoll, topic[len(PollTopicPrefix):]
	default:
		return rt, fmt.Errorf("%w: unknown path", ErrBadTopic)
	}
	var haveRID, haveOp bool
	params := strings.Split(query, "&")
	if len(params) > maxTopicParams {
		return RequestTopic{}, fmt.Errorf("%w: %d parameters", ErrBadTopic, len(params))
	}
	for _, p := range params {
		key, val, ok := strings.Cut(p, "=")
		if !ok || key == "" {
			return RequestTopic{}, fmt.Errorf("%w: malformed parameter", ErrBadTopic)
		}
		if !validTopicValue(key, 64) {
			return RequestTopic{}, fmt.Errorf("%w: bad parameter name", ErrBadTopic)
		}
		switch key {
		case "$rid":
			if haveRID || !validTopicValue(val, MaxRIDLength) {
				return RequestTopic{}, fmt.Errorf("%w: bad or repeated $rid", ErrBadTopic)
			}
			haveRID, rt.RID = true, val
		case "operationId":
			if rt.Kind != KindPoll || haveOp || !validTopicValue(val, MaxOperationIDLength) {
				return RequestTopic{}, fmt.Errorf("%w: bad or repeated operationId", ErrBadTopic)
			}
			haveOp, rt.OperationID = true, val
		default:
			if !validTopicValue(val, MaxOperationIDLength) && val != "" {
				return RequestTopic{}, fmt.Errorf("%w: bad parameter value", ErrBadTopic)
			}
		}
	}
	if !haveRID {
		return RequestTopic{}, fmt.Errorf("%w: missing $rid", ErrBadTopic)
	}
	if rt.Kind == KindPoll && !haveOp {
		return RequestTopic{}, fmt.Errorf("%w: missing operationId", ErrBadTopic)
	}
	return rt, nil
}

// validTopicValue accepts 1..max printable ASCII characters other than the
// query separators and the MQTT wildcard and level characters.
func validTopicValue(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c >= 0x7f || c == '&' || c == '=' || c == '#' || c == '+' || c == '/' {
			return false
		}
	}
	return true
}

// maxFilterLength bounds a subscription filter (a response topic with the
// longest $rid is under 200 bytes).
const maxFilterLength = 512

// ResponseFilterAllowed reports whether a device may subscribe to filter:
// any well-formed filter that lies within the response topics, such as
// ResponseFilter itself, one status ($dps/registrations/res/202/#), + levels
// or one exact response topic (mosquitto_rr subscribes to the topic it
// expects). Answers are written to the requesting connection alone, never
// through fan-out, so a filter within the prefix shows a device nothing of
// another's; a wildcard that escapes the prefix (#, $dps/#,
// $dps/registrations/+/...) and shared subscriptions ($share/...) are refused.
func ResponseFilterAllowed(filter string) bool {
	if len(filter) > maxFilterLength || !strings.HasPrefix(filter, responsePrefix) || !utf8.ValidString(filter) {
		return false
	}
	levels := strings.Split(filter[len(responsePrefix):], "/")
	for i, l := range levels {
		switch {
		case l == "#" && i == len(levels)-1, l == "+":
		case strings.ContainsAny(l, "#+\x00"):
			return false
		}
	}
	return true
}

// ResponseTopic builds `$dps/registrations/res/{status}/?$rid={rid}` plus
// `&retry-after={seconds}` when retryAfter >= 0 (rounded up to whole seconds).
func ResponseTopic(status int, rid string, retryAfter time.Duration) string {
	var b strings.Builder
	b.Grow(len(responsePrefix) + len(rid) + 32)
	b.WriteString(responsePrefix)
	b.WriteString(strconv.Itoa(status))
	b.WriteString("/?$rid=")
	b.WriteString(rid)
	if retryAfter >= 0 {
		secs := int64((retryAfter + time.Second - 1) / time.Second)
		b.WriteString("&retry-after=")
		b.WriteString(strconv.FormatInt(secs, 10))
	}
	return b.String()
}
