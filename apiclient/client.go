// Package apiclient is a Go client of the enrollment service API (package
// api, the Azure DPS service REST shape). It reads a DPS service connection
// string, signs a short-lived service SAS token for every request and turns
// DPS error bodies into *APIError. Backup streams dpsd's hot backup, which
// is not part of the DPS API. It shares the record types (package store)
// and the wire types (package api/wire) with the server, and links neither
// the server API nor a store engine.
package apiclient

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/api/wire"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/internal/connstr"
)

// Defaults of Options.
const (
	// DefaultAPIVersion is the api-version sent with every request.
	DefaultAPIVersion = "2021-10-01"
	// DefaultTokenLifetime is the lifetime of each signed service token.
	DefaultTokenLifetime = time.Hour
	// DefaultTimeout bounds a request when Options.HTTPClient is nil.
	DefaultTimeout = 5 * time.Minute
	// maxResponseBytes bounds a response body read into memory.
	maxResponseBytes = 256 << 20
)

// ErrConnectionString means a connection string is malformed or incomplete.
var ErrConnectionString = errors.New("apiclient: bad connection string")

// ConnectionString is a parsed DPS service connection string.
type ConnectionString struct {
	// HostName is the service host (the sr of tokens), e.g. "dps.example.com".
	HostName string
	// KeyName is the shared access policy (the skn of tokens).
	KeyName string
	// Key is the decoded policy key. A secret.
	Key []byte
}

// ParseConnectionString parses "HostName=...;SharedAccessKeyName=...;SharedAccessKey=..."
// (names case-insensitive, any order, unknown parts ignored).
func ParseConnectionString(s string) (ConnectionString, error) {
	f, err := connstr.Parse(s)
	if err != nil {
		return ConnectionString{}, fmt.Errorf("%w: %w", ErrConnectionString, err)
	}
	return ConnectionString(f), nil
}

// String renders the connection string (it contains the key: treat it as a secret).
func (cs ConnectionString) String() string {
	return "HostName=" + cs.HostName + ";SharedAccessKeyName=" + cs.KeyName +
		";SharedAccessKey=" + base64.StdEncoding.EncodeToString(cs.Key)
}

// Options tune a Client. Zero fields take defaults.
type Options struct {
	// BaseURL overrides https://{HostName}, e.g. "https://127.0.0.1:8443"
	// for tests or a non-default port. Token sr stays HostName.
	BaseURL string
	// HTTPClient sends the requests; nil means a client with DefaultTimeout.
	HTTPClient *http.Client
	// APIVersion is sent as ?api-version=; "" means DefaultAPIVersion.
	APIVersion string
	// TokenLifetime is the lifetime of signed tokens; 0 means DefaultTokenLifetime.
	TokenLifetime time.Duration
	// Now is the clock used to sign tokens; nil means time.Now.
	Now func() time.Time
	// Warnings, when set, is called with the text of every warning an
	// answer carries (wire.WarningHeader: a write the service accepted but
	// an operator should look at, such as one TPM enrolled under two
	// registration ids), before the call returns. nil ignores them.
	Warnings func(message string)
}

// Client talks to the enrollment service API. Safe for concurrent use.
type Client struct {
	cs         ConnectionString
	base       *url.URL
	hc         *http.Client
	apiVersion string
	lifetime   time.Duration
	now        func() time.Time
	warnings   func(string) // Options.Warnings, nil: ignored
}

// New returns a client for the service named by connectionString. Later
// Options override the non-zero fields of earlier ones.
func New(connectionString string, opts ...Options) (*Client, error) {
	cs, err := ParseConnectionString(connectionString)
	if err != nil {
		return nil, err
	}
	var o Options
	for _, x := range opts {
		if x.BaseURL != "" {
			o.BaseURL = x.BaseURL
		}
		if x.HTTPClient != nil {
			o.HTTPClient = x.HTTPClient
		}
		if x.APIVersion != "" {
			o.APIVersion = x.APIVersion
		}
		if x.TokenLifetime > 0 {
			o.TokenLifetime = x.TokenLifetime
		}
		if x.Now != nil {
			o.Now = x.Now
		}
		if x.Warnings != nil {
			o.Warnings = x.Warnings
		}
	}
	c := &Client{cs: cs, hc: o.HTTPClient, apiVersion: o.APIVersion, lifetime: o.TokenLifetime, now: o.Now, warnings: o.Warnings}
	raw := o.BaseURL
	if raw == "" {
		raw = "https://" + cs.HostName
	}
	c.base, err = url.Parse(strings.TrimRight(raw, "/"))
	if err != nil || (c.base.Scheme != "https" && c.base.Scheme != "http") || c.base.Host == "" {
		return nil, fmt.Errorf("apiclient: base URL %q is not an http(s) URL", raw)
	}
	if c.hc == nil {
		c.hc = &http.Client{Timeout: DefaultTimeout}
	}
	if c.apiVersion == "" {
		c.apiVersion = DefaultAPIVersion
	}
	if c.lifetime <= 0 {
		c.lifetime = DefaultTokenLifetime
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// HostName is the service host name of the connection string.
func (c *Client) HostName() string { return c.cs.HostName }

// APIError is a DPS error answer. ErrorCode / 1000 is normally Status.
type APIError struct {
	Status     int
	ErrorCode  int
	Message    string
	TrackingID string
}

// Error describes the failure with its code and tracking id.
func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	s := fmt.Sprintf("service api: %d (%d): %s", e.Status, e.ErrorCode, msg)
	if e.TrackingID != "" {
		s += " [trackingId " + e.TrackingID + "]"
	}
	return s
}

// IsStatus reports whether err is an *APIError with the given HTTP status.
func IsStatus(err error, status int) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == status
}

// token signs a service SAS token valid for the client's token lifetime.
func (c *Client) token() string {
	return attest.SignSAS(c.cs.Key, c.cs.HostName, c.now().Add(c.lifetime), c.cs.KeyName)
}

// response is what do returns on success.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request; in is JSON-encoded when not nil. Non-2xx answers
// become *APIError.
func (c *Client) do(ctx context.Context, method, path string, in any, hdr http.Header) (*response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("apiclient: encoding %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	u := c.base.String() + path + "?" + url.Values{"api-version": {c.apiVersion}}.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("apiclient: building %s %s: %w", method, path, err)
	}
	for k, vs := range hdr {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("Authorization", c.token())
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("apiclient: %s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, maxResponseBytes))
	if err != nil {
		return nil, fmt.Errorf("apiclient: reading %s %s: %w", method, path, err)
	}
	if c.warnings != nil {
		for _, msg := range res.Header.Values(wire.WarningHeader) {
			c.warnings(msg)
		}
	}
	if res.StatusCode/100 != 2 {
		return nil, errorFromResponse(res, b)
	}
	return &response{status: res.StatusCode, header: res.Header, body: b}, nil
}

// errorFromResponse turns a non-2xx answer with body b into an *APIError,
// taking code, message and tracking id from a DPS error body when there is one.
func errorFromResponse(res *http.Response, b []byte) *APIError {
	ae := &APIError{Status: res.StatusCode}
	var eb wire.Error
	if json.Unmarshal(b, &eb) == nil {
		ae.ErrorCode, ae.TrackingID, ae.Message = eb.ErrorCode, eb.TrackingID, eb.Message
	}
	if ae.TrackingID == "" {
		ae.TrackingID = res.Header.Get("x-ms-request-id")
	}
	return ae
}

// decode unmarshals a response body into out.
func decode[T any](r *response, what string) (T, error) {
	var out T
	if err := json.Unmarshal(r.body, &out); err != nil {
		return out, fmt.Errorf("apiclient: decoding %s: %w", what, err)
	}
	return out, nil
}

// etagHeader returns an If-Match header for etag, or nil for "".
func etagHeader(etag string) http.Header {
	if etag == "" {
		return nil
	}
	if etag != "*" && !strings.HasPrefix(etag, `"`) {
		etag = `"` + etag + `"`
	}
	return http.Header{"If-Match": {etag}}
}

// pageHeader returns the paging request headers.
func pageHeader(pageSize int, continuation string) http.Header {
	h := http.Header{}
	if pageSize > 0 {
		h.Set("x-ms-max-item-count", fmt.Sprint(pageSize))
	}
	if continuation != "" {
		h.Set("x-ms-continuation", continuation)
	}
	return h
}

// escape makes an id one path segment.
func escape(id string) string { return url.PathEscape(id) }

// query posts a "*" query for one page.
func query[T any](ctx context.Context, c *Client, path string, pageSize int, continuation string) ([]T, string, error) {
	r, err := c.do(ctx, http.MethodPost, path, map[string]string{"query": "*"}, pageHeader(pageSize, continuation))
	if err != nil {
		return nil, "", err
	}
	items, err := decode[[]T](r, path)
	if err != nil {
		return nil, "", err
	}
	return items, r.header.Get("x-ms-continuation"), nil
}

// each visits every item of a paged query, following continuation tokens.
func each[T any](ctx context.Context, c *Client, path string, pageSize int, fn func(T) error) error {
	cont := ""
	for {
		items, next, err := query[T](ctx, c, path, pageSize, cont)
		if err != nil {
			return err
		}
		for _, it := range items {
			if err := fn(it); err != nil {
				return err
			}
		}
		if next == "" {
			return nil
		}
		cont = next
	}
}
