package hubconn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// APIVersion is the IoT Hub service API version the connector speaks (the
// one the official service SDKs send).
const APIVersion = "2021-04-12"

// Limits of the IoT Hub connector.
const (
	// DefaultRequestTimeout bounds one HTTP request to a hub.
	DefaultRequestTimeout = 10 * time.Second
	// tokenLifetime is how long a service SAS is valid; a fresh one is
	// signed for every request.
	tokenLifetime = time.Hour
	// maxBody bounds what is read of a hub's answer.
	maxBody = 1 << 20
	// maxConflicts bounds the create/update races one Register rides out.
	maxConflicts = 3
)

// IoTHub is the connector of one Azure IoT Hub (or anything that speaks
// its registry and twin REST API). Safe for concurrent use.
type IoTHub struct {
	cs      ConnectionString
	base    string // https://HostName
	client  *http.Client
	agent   string
	timeout time.Duration
	now     func() time.Time
}

// NewIoTHub returns the connector of the hub cs names. Requests go to
// https://HostName (a HostName with a port, unlike the official SDKs,
// is accepted: tests use it).
func NewIoTHub(cs ConnectionString, opts Options) *IoTHub {
	opts = opts.withDefaults()
	return &IoTHub{cs: cs, base: "https://" + cs.HostName, client: opts.Client, agent: opts.UserAgent,
		timeout: opts.RequestTimeout, now: opts.Now}
}

// HostName returns the hub's host name.
func (h *IoTHub) HostName() string { return h.cs.HostName }

// hubDevice is the registry's Device body (the fields the connector reads
// or writes; others the hub keeps).
type hubDevice struct {
	DeviceID       string          `json:"deviceId"`
	ETag           string          `json:"etag,omitempty"`
	Status         string          `json:"status,omitempty"`
	StatusReason   string          `json:"statusReason,omitempty"`
	Authentication *hubAuth        `json:"authentication,omitempty"`
	Capabilities   *hubCapability  `json:"capabilities,omitempty"`
	DeviceScope    string          `json:"deviceScope,omitempty"`
	ParentScopes   json.RawMessage `json:"parentScopes,omitempty"`
}

type hubAuth struct {
	Type           string         `json:"type"`
	SymmetricKey   *hubKeys       `json:"symmetricKey,omitempty"`
	X509Thumbprint *hubThumbprint `json:"x509Thumbprint,omitempty"`
}

type hubKeys struct {
	PrimaryKey   string `json:"primaryKey"`
	SecondaryKey string `json:"secondaryKey"`
}

type hubThumbprint struct {
	PrimaryThumbprint   string `json:"primaryThumbprint"`
	SecondaryThumbprint string `json:"secondaryThumbprint,omitempty"`
}

type hubCapability struct {
	IoTEdge bool `json:"iotEdge"`
}

// hubTwin is the twin body: the parts the connector reads or replaces.
type hubTwin struct {
	DeviceID   string          `json:"deviceId,omitempty"`
	ETag       string          `json:"etag,omitempty"`
	Tags       json.RawMessage `json:"tags,omitempty"`
	Properties *hubTwinProps   `json:"properties,omitempty"`
}

type hubTwinProps struct {
	Desired json.RawMessage `json:"desired,omitempty"`
}

// auth is d's credential in the registry's shape.
func (d *Device) auth() *hubAuth {
	switch d.Auth.Type {
	case AuthSAS:
		return &hubAuth{Type: AuthSAS, SymmetricKey: &hubKeys{PrimaryKey: d.Auth.PrimaryKey, SecondaryKey: d.Auth.SecondaryKey}}
	case AuthSelfSigned:
		return &hubAuth{Type: AuthSelfSigned, X509Thumbprint: &hubThumbprint{
			PrimaryThumbprint: d.Auth.PrimaryThumbprint, SecondaryThumbprint: d.Auth.SecondaryThumbprint}}
	}
	return &hubAuth{Type: d.Auth.Type}
}

// sameIdentity reports whether the hub's device already has d's
// credential and capabilities, so that nothing needs to be written.
func sameIdentity(have *hubDevice, d *Device) bool {
	a := have.Authentication
	want := d.auth()
	if a == nil || a.Type != want.Type {
		return false
	}
	switch want.Type {
	case AuthSAS:
		if a.SymmetricKey == nil || a.SymmetricKey.PrimaryKey != want.SymmetricKey.PrimaryKey ||
			a.SymmetricKey.SecondaryKey != want.SymmetricKey.SecondaryKey {
			return false
		}
	case AuthSelfSigned:
		if a.X509Thumbprint == nil || !strings.EqualFold(a.X509Thumbprint.PrimaryThumbprint, want.X509Thumbprint.PrimaryThumbprint) ||
			!strings.EqualFold(a.X509Thumbprint.SecondaryThumbprint, want.X509Thumbprint.SecondaryThumbprint) {
			return false
		}
	}
	edge := have.Capabilities != nil && have.Capabilities.IoTEdge
	return edge == d.IoTEdge
}

// Register creates the device, or updates the device of that id (read
// first, written under its etag, left alone when it already holds d's
// credential and capabilities), then replaces its twin's tags and desired
// properties when twin is not nil. A device the hub has disabled stays
// disabled.
func (h *IoTHub) Register(ctx context.Context, d *Device, twin *Twin) error {
	if err := h.putDevice(ctx, d); err != nil {
		return err
	}
	if twin == nil {
		return nil
	}
	body := hubTwin{Tags: orEmpty(twin.Tags), Properties: &hubTwinProps{Desired: orEmpty(twin.Desired)}}
	_, err := h.do(ctx, "replace twin", http.MethodPut, "/twins/"+url.PathEscape(d.DeviceID), `"*"`, body, nil)
	return err
}

// putDevice creates or updates the identity of d.DeviceID.
func (h *IoTHub) putDevice(ctx context.Context, d *Device) error {
	path := "/devices/" + url.PathEscape(d.DeviceID)
	for range maxConflicts {
		var have hubDevice
		_, err := h.do(ctx, "read device", http.MethodGet, path, "", nil, &have)
		switch {
		case errors.Is(err, ErrNotFound):
			body := hubDevice{DeviceID: d.DeviceID, Status: "enabled", Authentication: d.auth(), Capabilities: &hubCapability{IoTEdge: d.IoTEdge}}
			_, err = h.do(ctx, "create device", http.MethodPut, path, "", body, nil)
			if conflict(err, http.StatusConflict) {
				continue // created meanwhile: read it again and update it
			}
			return err
		case err != nil:
			return err
		case sameIdentity(&have, d):
			return nil
		}
		upd := have
		upd.Authentication = d.auth()
		upd.Capabilities = &hubCapability{IoTEdge: d.IoTEdge}
		if upd.Status == "" {
			upd.Status = "enabled"
		}
		_, err = h.do(ctx, "update device", http.MethodPut, path, quote(have.ETag), upd, nil)
		if conflict(err, http.StatusPreconditionFailed) || errors.Is(err, ErrNotFound) {
			continue // changed or deleted meanwhile: start over
		}
		return err
	}
	return &Error{Hub: h.cs.HostName, Op: "create or update device", Retryable: true,
		Message: "the device kept changing under the update"}
}

// Twin reads the device's twin: its tags and desired properties, without
// the hub's metadata ($metadata, $version), so that they can be written to
// another hub.
func (h *IoTHub) Twin(ctx context.Context, deviceID string) (*Twin, error) {
	var t hubTwin
	if _, err := h.do(ctx, "read twin", http.MethodGet, "/twins/"+url.PathEscape(deviceID), "", nil, &t); err != nil {
		return nil, err
	}
	out := &Twin{Tags: t.Tags}
	if t.Properties != nil {
		out.Desired = t.Properties.Desired
	}
	var err error
	if out.Tags, err = stripMetadata(out.Tags); err != nil {
		return nil, &Error{Hub: h.cs.HostName, Op: "read twin", Status: 200, Message: "tags: " + err.Error()}
	}
	if out.Desired, err = stripMetadata(out.Desired); err != nil {
		return nil, &Error{Hub: h.cs.HostName, Op: "read twin", Status: 200, Message: "desired properties: " + err.Error()}
	}
	return out, nil
}

// Remove deletes the device unconditionally; a missing device is fine.
func (h *IoTHub) Remove(ctx context.Context, deviceID string) error {
	_, err := h.do(ctx, "delete device", http.MethodDelete, "/devices/"+url.PathEscape(deviceID), `"*"`, nil, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// do sends one request and decodes a 2xx answer into out. A 404 is
// ErrNotFound; any other failure an *Error.
func (h *IoTHub) do(ctx context.Context, op, method, path, ifMatch string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, &Error{Hub: h.cs.HostName, Op: op, Message: "encoding the request: " + err.Error()}
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, h.base+path+"?api-version="+APIVersion, body)
	if err != nil {
		return 0, &Error{Hub: h.cs.HostName, Op: op, Message: err.Error()}
	}
	req.Header.Set("Authorization", ServiceSAS(h.cs.HostName, h.cs.KeyName, h.cs.Key, h.now().Add(tokenLifetime)))
	req.Header.Set("User-Agent", h.agent)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	if ifMatch != "" {
		req.Header.Set("If-Match", ifMatch)
	}
	res, err := h.client.Do(req)
	if err != nil {
		msg := err.Error()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			msg = fmt.Sprintf("no answer within %s", h.timeout)
		}
		return 0, &Error{Hub: h.cs.HostName, Op: op, Retryable: true, Message: msg}
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, maxBody))
	if err != nil {
		return res.StatusCode, &Error{Hub: h.cs.HostName, Op: op, Status: res.StatusCode, Retryable: true, Message: "reading the answer: " + err.Error()}
	}
	if res.StatusCode >= 300 {
		e := hubError(h.cs.HostName, op, res, data)
		if res.StatusCode == http.StatusNotFound && (e.Code == "" || e.Code == "DeviceNotFound") {
			return res.StatusCode, fmt.Errorf("%w: %w", ErrNotFound, e)
		}
		return res.StatusCode, e
	}
	if out != nil && len(bytes.TrimSpace(data)) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return res.StatusCode, &Error{Hub: h.cs.HostName, Op: op, Status: res.StatusCode, Message: "the answer is not JSON: " + err.Error()}
		}
	}
	return res.StatusCode, nil
}

// hubError reads IoT Hub's error answer: the iothub-errorcode header, and
// the body {"Message":"ErrorCode:<Name>;<message>", ...} (the Message may
// also be a JSON document of its own, with errorCode and message).
func hubError(hub, op string, res *http.Response, data []byte) *Error {
	e := &Error{Hub: hub, Op: op, Status: res.StatusCode, Retryable: retryableStatus(res.StatusCode),
		Code: res.Header.Get("iothub-errorcode")}
	if s := res.Header.Get("Retry-After"); s != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n >= 0 {
			e.RetryAfter = min(time.Duration(n)*time.Second, 5*time.Minute)
		}
	}
	var body struct {
		Message string `json:"Message"`
	}
	if json.Unmarshal(data, &body) == nil && body.Message != "" {
		msg := body.Message
		var inner struct {
			ErrorCode json.Number `json:"errorCode"`
			Message   string      `json:"message"`
		}
		if strings.HasPrefix(strings.TrimSpace(msg), "{") && json.Unmarshal([]byte(msg), &inner) == nil {
			if e.Code == "" {
				e.Code = inner.ErrorCode.String()
			}
			msg = inner.Message
		} else if rest, ok := strings.CutPrefix(msg, "ErrorCode:"); ok {
			code, m, _ := strings.Cut(rest, ";")
			if e.Code == "" {
				e.Code = code
			}
			msg = m
		}
		e.Message = msg
	}
	if e.Message == "" {
		e.Message = http.StatusText(res.StatusCode)
	}
	return e
}

// conflict reports an *Error with the given status.
func conflict(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

// quote returns an etag as an If-Match value.
func quote(etag string) string {
	if etag == "" {
		return `"*"`
	}
	if strings.HasPrefix(etag, `"`) {
		return etag
	}
	return `"` + etag + `"`
}

// orEmpty returns raw, or an empty object for nil.
func orEmpty(raw json.RawMessage) json.RawMessage {
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return json.RawMessage("{}")
	}
	return raw
}

// stripMetadata removes every member whose name starts with "$" (the
// hub's $metadata and $version) from a JSON object, at any depth.
func stripMetadata(raw json.RawMessage) (json.RawMessage, error) {
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil, nil
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("not a JSON object")
	}
	strip(m)
	return json.Marshal(m)
}

func strip(m map[string]any) {
	for k, v := range m {
		if strings.HasPrefix(k, "$") {
			delete(m, k)
			continue
		}
		if sub, ok := v.(map[string]any); ok {
			strip(sub)
		}
	}
}
