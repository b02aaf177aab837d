package allocator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Error codes of a failed custom allocation (registrationState.errorCode),
// as the cloud service reports them.
const (
	// ErrorCodeFailed (CustomAllocationFailed): the webhook answered an
	// error other than 401 or >= 429, or an answer that is not an
	// AllocationResponse, or a hub that is not one of the linked hubs.
	ErrorCodeFailed = 400207
	// ErrorCodeHubNotSpecified (CustomAllocationIotHubNotSpecified): the
	// webhook answered 200 with no iotHubHostName.
	ErrorCodeHubNotSpecified = 400208
	// ErrorCodeUnauthorized (CustomAllocationUnauthorizedAccess): the
	// webhook answered 401.
	ErrorCodeUnauthorized = 400209
)

// Limits of a webhook call.
const (
	// DefaultTimeout bounds one call when the definition names none.
	DefaultTimeout = 10 * time.Second
	// MaxTimeout bounds Definition.Timeout.
	MaxTimeout = 5 * time.Minute
	// MaxResponseSize bounds the answer read (a twin is at most 32 KiB of
	// desired properties and 8 KiB of tags; a payload is the device's).
	MaxResponseSize = 1 << 20
)

// Definition is where and how one webhook is called.
type Definition struct {
	// URL is the webhook's https URL, function key (?code=...) included.
	URL string
	// Timeout bounds the call (0: the Webhook's default).
	Timeout time.Duration
	// ClientCertificate names the client certificate to present (one of
	// WebhookOptions.NamedClients; "": the default Client's).
	ClientCertificate string
}

// Custom decides a custom allocation. Webhook implements it; tests may
// substitute their own.
type Custom interface {
	// Allocate asks the webhook of def where the device of req goes. An
	// error is an *Error.
	Allocate(ctx context.Context, def Definition, req *Request) (*Response, error)
}

// Error is a failed call of a webhook: either Retryable (the webhook could
// not be reached, timed out or answered 429 or above: the cloud retries
// those) or final, with the error code the registration fails with.
type Error struct {
	// Retryable reports a failure worth another attempt.
	Retryable bool
	// Timeout reports a call that ran out of time (Retryable too).
	Timeout bool
	// Status is the webhook's HTTP status (0 when it did not answer).
	Status int
	// ErrorCode is the registration's errorCode when the failure is final.
	ErrorCode int
	// Message says what happened, for the registration's errorMessage and
	// the log. It never contains the webhook URL's query.
	Message string
	// RetryAfter is the webhook's Retry-After, when it sent one.
	RetryAfter time.Duration
}

// Error returns the message.
func (e *Error) Error() string { return "custom allocation: " + e.Message }

// Webhook calls custom allocation webhooks over HTTPS. Safe for concurrent use.
type Webhook struct {
	client  *http.Client
	named   map[string]*http.Client
	agent   string
	timeout time.Duration
}

// WebhookOptions configure a Webhook.
type WebhookOptions struct {
	// Client makes the calls; it should carry the TLS configuration (the
	// CAs trusted, a client certificate for webhooks that ask for one).
	// nil: an http.Client with the default transport.
	Client *http.Client
	// UserAgent is sent with each call (default "dpsd").
	UserAgent string
	// DefaultTimeout bounds a call whose Definition names no timeout
	// (default DefaultTimeout).
	DefaultTimeout time.Duration
	// NamedClients make the calls of definitions that name a client
	// certificate, by its name: each presents that certificate.
	NamedClients map[string]*http.Client
}

// NewWebhook returns a webhook caller.
func NewWebhook(opts WebhookOptions) *Webhook {
	w := &Webhook{client: opts.Client, named: opts.NamedClients, agent: opts.UserAgent, timeout: opts.DefaultTimeout}
	if w.timeout <= 0 {
		w.timeout = DefaultTimeout
	}
	if w.client == nil {
		w.client = &http.Client{}
	}
	if w.agent == "" {
		w.agent = "dpsd"
	}
	return w
}

// Allocate POSTs req to def.URL and returns its AllocationResponse. Only
// an https URL is called. See Error for how failures are told apart. A
// 200 answer without iotHubHostName is an Error with
// ErrorCodeHubNotSpecified; whether the hub is one of req.LinkedHubs is
// the caller's to check.
func (w *Webhook) Allocate(ctx context.Context, def Definition, req *Request) (*Response, error) {
	u, err := url.Parse(def.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, &Error{ErrorCode: ErrorCodeFailed, Message: "the webhook URL is not an https URL"}
	}
	where := MaskWebhookURL(def.URL)
	client := w.client
	if def.ClientCertificate != "" {
		if client = w.named[def.ClientCertificate]; client == nil {
			return nil, &Error{ErrorCode: ErrorCodeFailed,
				Message: fmt.Sprintf("no client certificate named %q is configured on this server (outbound-client-certs)", def.ClientCertificate)}
		}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, &Error{ErrorCode: ErrorCodeFailed, Message: fmt.Sprintf("encode the allocation request: %v", err)}
	}
	timeout := def.Timeout
	if timeout <= 0 {
		timeout = w.timeout
	}
	ctx, cancel := context.WithTimeout(ctx, min(timeout, MaxTimeout))
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, def.URL, bytes.NewReader(body))
	if err != nil {
		return nil, &Error{ErrorCode: ErrorCodeFailed, Message: "the webhook URL is not usable"}
	}
	hr.Header.Set("Content-Type", "application/json; charset=utf-8")
	hr.Header.Set("Accept", "application/json")
	hr.Header.Set("User-Agent", w.agent)
	res, err := client.Do(hr)
	if err != nil {
		timedOut := errors.Is(ctx.Err(), context.DeadlineExceeded)
		msg := fmt.Sprintf("webhook %s could not be reached: %s", where, scrub(err, def.URL, where))
		if timedOut {
			msg = fmt.Sprintf("webhook %s did not answer within %s", where, timeout)
		}
		return nil, &Error{Retryable: true, Timeout: timedOut, Message: msg}
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, MaxResponseSize+1))
	if err != nil {
		timedOut := errors.Is(ctx.Err(), context.DeadlineExceeded)
		return nil, &Error{Retryable: true, Timeout: timedOut, Status: res.StatusCode,
			Message: fmt.Sprintf("webhook %s: reading the answer: %s", where, scrub(err, def.URL, where))}
	}
	switch {
	case res.StatusCode == http.StatusUnauthorized:
		return nil, &Error{Status: res.StatusCode, ErrorCode: ErrorCodeUnauthorized,
			Message: "Custom allocation failed with status code: 401"}
	case res.StatusCode >= 429:
		return nil, &Error{Retryable: true, Status: res.StatusCode, RetryAfter: retryAfter(res.Header.Get("Retry-After")),
			Message: fmt.Sprintf("Custom allocation failed with status code: %d", res.StatusCode)}
	case res.StatusCode < 200 || res.StatusCode > 299:
		return nil, &Error{Status: res.StatusCode, ErrorCode: ErrorCodeFailed,
			Message: fmt.Sprintf("Custom allocation failed with status code: %d", res.StatusCode)}
	}
	return ParseResponse(data)
}

// ParseResponse parses a webhook's 200 answer: an AllocationResponse whose
// iotHubHostName is set, initialTwin an object (or null) and payload any
// JSON value. Failures are *Error (ErrorCodeHubNotSpecified for a missing
// hub, ErrorCodeFailed for the rest).
func ParseResponse(data []byte) (*Response, error) {
	if len(data) > MaxResponseSize {
		return nil, &Error{ErrorCode: ErrorCodeFailed, Message: fmt.Sprintf("the webhook's answer exceeds %d bytes", MaxResponseSize)}
	}
	var r Response
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, &Error{ErrorCode: ErrorCodeFailed, Message: "the webhook's answer is not an AllocationResponse: " + err.Error()}
	}
	r.IoTHubHostName = strings.TrimSpace(r.IoTHubHostName)
	if r.IoTHubHostName == "" {
		return nil, &Error{ErrorCode: ErrorCodeHubNotSpecified, Message: "Custom allocation returned no iotHubHostName"}
	}
	if isNull(r.InitialTwin) {
		r.InitialTwin = nil
	}
	if isNull(r.Payload) {
		r.Payload = nil
	}
	if t := bytes.TrimSpace(r.InitialTwin); len(t) > 0 && t[0] != '{' {
		return nil, &Error{ErrorCode: ErrorCodeFailed, Message: "the webhook's initialTwin is not a JSON object"}
	}
	return &r, nil
}

// isNull reports whether raw is the JSON literal null.
func isNull(raw json.RawMessage) bool {
	return bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

// retryAfter reads a Retry-After of seconds (dates are ignored), capped at a minute.
func retryAfter(v string) time.Duration {
	var n int
	if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d", &n); err != nil || n < 0 {
		return 0
	}
	return min(time.Duration(n)*time.Second, time.Minute)
}

// scrub returns err's text with the webhook's full URL replaced by its
// masked form: net/http names the URL, function key included, in its errors.
func scrub(err error, full, masked string) string {
	msg := err.Error()
	if full != masked {
		msg = strings.ReplaceAll(msg, full, masked)
		if u, perr := url.Parse(full); perr == nil && u.RawQuery != "" {
			msg = strings.ReplaceAll(msg, u.RawQuery, MaskedQuery)
		}
	}
	return msg
}

// ValidClientCertificateName reports whether name can name a client
// certificate for webhooks: 1-64 ASCII letters, digits, '.', '_' or '-',
// not starting with '.' (the file name of the certificate, NAME.pem).
func ValidClientCertificateName(name string) bool {
	if name == "" || len(name) > 64 || name[0] == '.' {
		return false
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		default:
			return false
		}
	}
	return true
}
