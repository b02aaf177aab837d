package device

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DPS MQTT topics (docs/protocol.md section 3).
const (
	// ResponseFilter is the only subscription a device makes.
	ResponseFilter = "$dps/registrations/res/#"
	responsePrefix = "$dps/registrations/res/"
	registerPrefix = "$dps/registrations/PUT/iotdps-register/?$rid="
	pollPrefix     = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid="
)

// maxRetryAfter caps a retry-after the broker asks for; the total Timeout
// bounds the wait anyway, this only keeps the arithmetic sane.
const maxRetryAfter = time.Hour

// registerTopic is the register request topic for request id rid.
func registerTopic(rid string) string { return registerPrefix + rid }

// pollTopic is the operation status topic for request id rid.
func pollTopic(rid, operationID string) string {
	return pollPrefix + rid + "&operationId=" + url.QueryEscape(operationID)
}

// responseTopic is a parsed "$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]".
type responseTopic struct {
	Status        int
	RID           string // exactly as in the topic
	RetryAfter    time.Duration
	HasRetryAfter bool
}

// parseResponseTopic parses a response topic. It accepts the query after
// "{status}/?" or "{status}?", ignores unknown parameters and requires $rid.
// The topic comes from the network: every malformed input is an error.
func parseResponseTopic(topic string) (responseTopic, error) {
	var rt responseTopic
	rest, ok := strings.CutPrefix(topic, responsePrefix)
	if !ok {
		return rt, fmt.Errorf("%w: topic %q is not a DPS response", ErrProtocol, trunc(topic))
	}
	statusText, query, ok := strings.Cut(rest, "?")
	if !ok {
		return rt, fmt.Errorf("%w: response topic %q has no query", ErrProtocol, trunc(topic))
	}
	statusText = strings.TrimSuffix(statusText, "/")
	if len(statusText) != 3 || !allDigits(statusText) {
		return rt, fmt.Errorf("%w: response topic %q has no 3-digit status", ErrProtocol, trunc(topic))
	}
	rt.Status, _ = strconv.Atoi(statusText)
	if rt.Status < 100 {
		return rt, fmt.Errorf("%w: response status %d out of range", ErrProtocol, rt.Status)
	}
	haveRID := false
	for field := range strings.SplitSeq(query, "&") {
		k, v, _ := strings.Cut(field, "=")
		switch k {
		case "$rid":
			if haveRID {
				return rt, fmt.Errorf("%w: response topic %q repeats $rid", ErrProtocol, trunc(topic))
			}
			rt.RID, haveRID = v, true
		case "retry-after":
			if len(v) == 0 || len(v) > 9 || !allDigits(v) {
				return rt, fmt.Errorf("%w: bad retry-after %q", ErrProtocol, trunc(v))
			}
			n, _ := strconv.Atoi(v)
			rt.RetryAfter = min(time.Duration(n)*time.Second, maxRetryAfter)
			rt.HasRetryAfter = true
		}
	}
	if !haveRID || rt.RID == "" {
		return rt, fmt.Errorf("%w: response topic %q has no $rid", ErrProtocol, trunc(topic))
	}
	return rt, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// trunc shortens untrusted text before it goes into an error message.
func trunc(s string) string {
	const n = 120
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
