package iothubtest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// device is one identity and its twin.
type device struct {
	id, etag, generationID, status, authType string
	primaryKey, secondaryKey                 string
	primaryThumb, secondaryThumb             string
	iotEdge                                  bool
	deviceScope                              string
	tags, desired                            map[string]any
	twinETag                                 string
	twinVersion, desiredVersion              int64
}

func (d *device) identity() Identity {
	return Identity{DeviceID: d.id, ETag: d.etag, GenerationID: d.generationID, Status: d.status, AuthType: d.authType,
		PrimaryKey: d.primaryKey, SecondaryKey: d.secondaryKey, PrimaryThumbprint: d.primaryThumb,
		SecondaryThumbprint: d.secondaryThumb, IoTEdge: d.iotEdge}
}

// nextETag returns a fresh etag (the hub's are base64 of a counter).
func (h *Hub) nextETag() string {
	h.etagSeq++
	var b [8]byte
	for i := range b {
		b[7-i] = byte(h.etagSeq >> (8 * i))
	}
	return base64.StdEncoding.EncodeToString(b[:])
}

// apiError is an answer in the hub's error form.
type apiError struct {
	status int
	code   string
	msg    string
}

func errorf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// writeError answers e as IoT Hub does: the iothub-errorcode header and
// {"Message":"ErrorCode:<code>;<message>","ExceptionMessage":"Tracking ID:..."}.
func writeError(w http.ResponseWriter, e *apiError) {
	w.Header().Set("iothub-errorcode", e.code)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(e.status)
	_ = json.NewEncoder(w).Encode(map[string]string{
		"Message":          "ErrorCode:" + e.code + ";" + e.msg,
		"ExceptionMessage": "Tracking ID:" + strconv.FormatInt(time.Now().UnixNano(), 16) + "-G:0-TimeStamp:" + time.Now().UTC().Format("01/02/2006 15:04:05"),
	})
}

// statusRecorder remembers the status written.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (h *Hub) serve(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	down, delay := h.down, h.delay
	throttled := h.throttle > 0
	if throttled {
		h.throttle--
	}
	retryAfter := h.retryAft
	h.mu.Unlock()
	if down {
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				_ = c.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	rec := &statusRecorder{ResponseWriter: w}
	defer func() {
		h.mu.Lock()
		h.requests = append(h.requests, Request{Method: r.Method, Path: r.URL.EscapedPath(), IfMatch: r.Header.Get("If-Match"),
			UserAgent: r.UserAgent(), APIVersion: r.URL.Query().Get("api-version"), Status: rec.status})
		h.mu.Unlock()
	}()
	if throttled {
		if retryAfter > 0 {
			rec.Header().Set("Retry-After", strconv.Itoa(int(retryAfter/time.Second)))
		}
		writeError(rec, errorf(429, "ThrottlingException", "The request has been throttled. Operation type: CRUD"))
		return
	}
	if e := h.authorize(r, time.Now()); e != nil {
		writeError(rec, e)
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		writeError(rec, errorf(400, "InvalidProtocolVersion", "the api-version query parameter is required"))
		return
	}
	// Route on the escaped path: device ids may hold an encoded "/".
	segs := strings.Split(strings.Trim(r.URL.EscapedPath(), "/"), "/")
	if len(segs) != 2 {
		writeError(rec, errorf(404, "NotFound", "no such resource"))
		return
	}
	id, err := url.PathUnescape(segs[1])
	if err != nil || id == "" {
		writeError(rec, errorf(400, "ArgumentInvalid", "malformed device id"))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 256<<10))
	if err != nil {
		writeError(rec, errorf(400, "ArgumentInvalid", "reading the body: %v", err))
		return
	}
	var out any
	var e *apiError
	status := http.StatusOK
	switch segs[0] + " " + r.Method {
	case "devices PUT":
		out, e = h.putDevice(r, id, body)
	case "devices GET":
		out, e = h.getDevice(id)
	case "devices DELETE":
		e = h.deleteDevice(id, r.Header.Get("If-Match"))
		status = http.StatusNoContent
	case "twins GET":
		out, e = h.getTwin(id)
	case "twins PATCH":
		out, e = h.writeTwin(id, r.Header.Get("If-Match"), body, false)
	case "twins PUT":
		out, e = h.writeTwin(id, r.Header.Get("If-Match"), body, true)
	default:
		e = errorf(405, "MethodNotAllowed", "%s is not allowed on /%s", r.Method, segs[0])
	}
	if e != nil {
		writeError(rec, e)
		return
	}
	if status == http.StatusNoContent {
		rec.WriteHeader(status)
		return
	}
	rec.Header().Set("Content-Type", "application/json; charset=utf-8")
	rec.Header().Set("ETag", `"`+etagOf(out)+`"`)
	rec.WriteHeader(status)
	_ = json.NewEncoder(rec).Encode(out)
}

// authorize checks the service SAS in Authorization: signed with the
// policy's key over "{sr as sent}\n{se}", sr naming the hub (URL-decoded,
// case-insensitive; a path under it is fine), se in the future, skn the
// policy.
func (h *Hub) authorize(r *http.Request, now time.Time) *apiError {
	unauthorized := func(why string) *apiError {
		return errorf(401, "IotHubUnauthorizedAccess", "Unauthorized: %s", why)
	}
	a := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(a, "SharedAccessSignature ")
	if !ok {
		return unauthorized("no SharedAccessSignature")
	}
	fields := map[string]string{}
	for _, p := range strings.Split(rest, "&") {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return unauthorized("malformed token")
		}
		fields[k] = v
	}
	sr, sig, se, skn := fields["sr"], fields["sig"], fields["se"], fields["skn"]
	if skn != h.policy {
		return unauthorized("unknown policy")
	}
	exp, err := strconv.ParseInt(se, 10, 64)
	if err != nil || !time.Unix(exp, 0).After(now) {
		return unauthorized("token expired")
	}
	resource, err := url.QueryUnescape(sr)
	if err != nil {
		return unauthorized("malformed sr")
	}
	res, host := strings.ToLower(resource), strings.ToLower(h.HostName)
	if res != host && !strings.HasPrefix(res, host+"/") {
		return unauthorized("token for another hub")
	}
	sigText, err := url.QueryUnescape(sig)
	if err != nil {
		return unauthorized("malformed sig")
	}
	got, err := base64.StdEncoding.DecodeString(sigText)
	if err != nil {
		return unauthorized("malformed sig")
	}
	m := hmac.New(sha256.New, h.key)
	m.Write([]byte(sr + "\n" + se))
	if !hmac.Equal(got, m.Sum(nil)) {
		return unauthorized("bad signature")
	}
	return nil
}

// deviceBody is the registry's Device, as answered.
type deviceBody struct {
	DeviceID                   string          `json:"deviceId"`
	GenerationID               string          `json:"generationId,omitempty"`
	ETag                       string          `json:"etag,omitempty"`
	ConnectionState            string          `json:"connectionState,omitempty"`
	Status                     string          `json:"status,omitempty"`
	StatusReason               *string         `json:"statusReason"`
	ConnectionStateUpdatedTime string          `json:"connectionStateUpdatedTime,omitempty"`
	StatusUpdatedTime          string          `json:"statusUpdatedTime,omitempty"`
	LastActivityTime           string          `json:"lastActivityTime,omitempty"`
	CloudToDeviceMessageCount  int             `json:"cloudToDeviceMessageCount"`
	Authentication             *authBody       `json:"authentication,omitempty"`
	Capabilities               *capabilityBody `json:"capabilities,omitempty"`
	DeviceScope                string          `json:"deviceScope,omitempty"`
	ParentScopes               []string        `json:"parentScopes,omitempty"`
}

// deviceInput is the part of a Device the registry reads from a create or
// update. The other members (generationId, etag, connectionState, the
// times, cloudToDeviceMessageCount) are the service's own and are not read:
// the official Node.js client's Device class, which Microsoft's Node.js
// quickstart passes to Registry.create, sends cloudToDeviceMessageCount as
// the string "0" and connectionState as "disconnected".
type deviceInput struct {
	DeviceID       string          `json:"deviceId"`
	Status         string          `json:"status"`
	Authentication *authBody       `json:"authentication"`
	Capabilities   *capabilityBody `json:"capabilities"`
	DeviceScope    string          `json:"deviceScope"`
}

type authBody struct {
	Type           string          `json:"type"`
	SymmetricKey   *keysBody       `json:"symmetricKey,omitempty"`
	X509Thumbprint *thumbprintBody `json:"x509Thumbprint,omitempty"`
}

type keysBody struct {
	PrimaryKey   *string `json:"primaryKey"`
	SecondaryKey *string `json:"secondaryKey"`
}

type thumbprintBody struct {
	PrimaryThumbprint   *string `json:"primaryThumbprint"`
	SecondaryThumbprint *string `json:"secondaryThumbprint"`
}

type capabilityBody struct {
	IoTEdge bool `json:"iotEdge"`
}

func (d *device) body() *deviceBody {
	const never = "0001-01-01T00:00:00Z"
	out := &deviceBody{DeviceID: d.id, GenerationID: d.generationID, ETag: d.etag, ConnectionState: "Disconnected", Status: d.status,
		ConnectionStateUpdatedTime: never, StatusUpdatedTime: never, LastActivityTime: never,
		Capabilities: &capabilityBody{IoTEdge: d.iotEdge}, DeviceScope: d.deviceScope}
	a := &authBody{Type: d.authType}
	switch d.authType {
	case "sas":
		p, s := d.primaryKey, d.secondaryKey
		a.SymmetricKey = &keysBody{PrimaryKey: &p, SecondaryKey: &s}
	case "selfSigned":
		p, s := d.primaryThumb, d.secondaryThumb
		a.X509Thumbprint = &thumbprintBody{PrimaryThumbprint: &p, SecondaryThumbprint: &s}
	}
	out.Authentication = a
	return out
}

// etagOf returns the etag of an answer body.
func etagOf(v any) string {
	switch b := v.(type) {
	case *deviceBody:
		return b.ETag
	case map[string]any:
		s, _ := b["etag"].(string)
		return s
	}
	return ""
}

// matchETag applies If-Match to a stored etag: "" means none was sent.
func matchETag(ifMatch, etag string) (wildcard, ok bool) {
	m := strings.TrimSpace(ifMatch)
	if m == "" {
		return false, true
	}
	m = strings.TrimPrefix(m, "W/")
	m = strings.Trim(m, `"`)
	if m == "*" {
		return true, true
	}
	return false, m == etag
}

func (h *Hub) getDevice(id string) (any, *apiError) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.devices[id]
	if !ok {
		return nil, errorf(404, "DeviceNotFound", "Device %s not found", id)
	}
	h.counts["getDevice"]++
	return d.body(), nil
}

// putDevice creates (no If-Match, or "*") or replaces (its etag, or "*") a device.
func (h *Hub) putDevice(r *http.Request, id string, raw []byte) (any, *apiError) {
	var in deviceInput
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, errorf(400, "ArgumentInvalid", "the body is not a device: %v", err)
	}
	if in.DeviceID != id {
		return nil, errorf(400, "ArgumentInvalid", "deviceId %q does not match the path's %q", in.DeviceID, id)
	}
	if e := validDeviceID(id); e != nil {
		return nil, e
	}
	nd := &device{id: id, status: in.Status, deviceScope: in.DeviceScope}
	if in.Capabilities != nil {
		nd.iotEdge = in.Capabilities.IoTEdge
	}
	switch nd.status {
	case "":
		nd.status = "enabled"
	case "enabled", "disabled":
	default:
		return nil, errorf(400, "ArgumentInvalid", "status must be enabled or disabled")
	}
	if e := normalizeAuth(nd, in.Authentication); e != nil {
		return nil, e
	}
	h.mu.Lock()
	old, exists := h.devices[id]
	wildcard, matched := false, true
	if exists {
		wildcard, matched = matchETag(r.Header.Get("If-Match"), old.etag)
	} else {
		wildcard, matched = matchETag(r.Header.Get("If-Match"), "")
	}
	ifMatch := strings.TrimSpace(r.Header.Get("If-Match")) != ""
	switch {
	case exists && !ifMatch:
		h.mu.Unlock()
		return nil, errorf(409, "DeviceAlreadyExists", "A device with ID '%s' is already registered.", id)
	case exists && !matched:
		h.mu.Unlock()
		return nil, errorf(412, "PreconditionFailed", "Precondition failed: the etag does not match")
	case !exists && ifMatch && !wildcard:
		h.mu.Unlock()
		return nil, errorf(404, "DeviceNotFound", "Device %s not found", id)
	}
	if exists {
		nd.generationID = old.generationID
		nd.tags, nd.desired = old.tags, old.desired
		nd.twinETag, nd.twinVersion, nd.desiredVersion = old.twinETag, old.twinVersion, old.desiredVersion
		h.counts["update"]++
	} else {
		nd.generationID = h.nextETag()
		nd.tags, nd.desired = map[string]any{}, map[string]any{}
		nd.twinETag, nd.twinVersion, nd.desiredVersion = h.nextETag(), 1, 1
		h.counts["create"]++
		h.creates[id]++
	}
	nd.etag = h.nextETag()
	h.devices[id] = nd
	out := nd.body()
	hold, release := h.hold, h.release
	h.mu.Unlock()
	if !exists && hold != nil {
		hold <- id
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	return out, nil
}

// validDeviceID applies the registry's rules: up to 128 ASCII letters,
// digits and - . % _ * ? ! ( ) , : = @ $ '.
func validDeviceID(id string) *apiError {
	if len(id) > 128 {
		return errorf(400, "ArgumentInvalid", "device id longer than 128 characters")
	}
	for _, c := range []byte(id) {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-.%_*?!(),:=@$'+#", c) >= 0 {
			continue
		}
		return errorf(400, "ArgumentInvalid", "device id %q has a character IoT Hub does not allow", id)
	}
	return nil
}

// normalizeAuth applies the registry's rules to a device's authentication:
// none given is sas with generated keys; no type is selfSigned when a
// thumbprint is given, else sas; empty keys are generated; keys are base64
// of 16-64 bytes; thumbprints 40 or 64 hex digits.
func normalizeAuth(d *device, a *authBody) *apiError {
	if a == nil {
		a = &authBody{Type: "sas"}
	}
	t := a.Type
	if t == "" {
		t = "sas"
		if a.X509Thumbprint != nil && (deref(a.X509Thumbprint.PrimaryThumbprint) != "" || deref(a.X509Thumbprint.SecondaryThumbprint) != "") {
			t = "selfSigned"
		}
	}
	d.authType = t
	switch t {
	case "sas":
		var p, s string
		if a.SymmetricKey != nil {
			p, s = deref(a.SymmetricKey.PrimaryKey), deref(a.SymmetricKey.SecondaryKey)
		}
		for _, k := range []*string{&p, &s} {
			if *k == "" {
				b := make([]byte, 32)
				if _, err := randRead(b); err != nil {
					return errorf(500, "ServerError", "randomness: %v", err)
				}
				*k = base64.StdEncoding.EncodeToString(b)
				continue
			}
			raw, err := base64.StdEncoding.DecodeString(*k)
			if err != nil || len(raw) < 16 || len(raw) > 64 {
				return errorf(400, "ArgumentInvalid", "a symmetric key must be base64 of 16 to 64 bytes")
			}
		}
		d.primaryKey, d.secondaryKey = p, s
	case "selfSigned":
		if a.X509Thumbprint == nil || deref(a.X509Thumbprint.PrimaryThumbprint) == "" {
			return errorf(400, "ArgumentInvalid", "selfSigned authentication needs a primary thumbprint")
		}
		p, s := deref(a.X509Thumbprint.PrimaryThumbprint), deref(a.X509Thumbprint.SecondaryThumbprint)
		for _, th := range []string{p, s} {
			if th != "" && !isThumbprint(th) {
				return errorf(400, "ArgumentInvalid", "a thumbprint must be 40 or 64 hexadecimal digits")
			}
		}
		d.primaryThumb, d.secondaryThumb = p, s
	case "certificateAuthority", "none":
	default:
		return errorf(400, "ArgumentInvalid", "unknown authentication type %q", t)
	}
	return nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func isThumbprint(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func (h *Hub) deleteDevice(id, ifMatch string) *apiError {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.devices[id]
	if !ok {
		return errorf(404, "DeviceNotFound", "Device %s not found", id)
	}
	if _, matched := matchETag(ifMatch, d.etag); !matched {
		return errorf(412, "PreconditionFailed", "Precondition failed: the etag does not match")
	}
	delete(h.devices, id)
	h.counts["delete"]++
	return nil
}

// twinBody is a twin as the hub answers it.
func (d *device) twinBody() map[string]any {
	desired := deepCopy(d.desired)
	desired["$metadata"] = map[string]any{"$lastUpdated": time.Now().UTC().Format(time.RFC3339Nano), "$lastUpdatedVersion": d.desiredVersion}
	desired["$version"] = d.desiredVersion
	return map[string]any{
		"deviceId": d.id, "etag": d.twinETag, "deviceEtag": d.etag, "status": d.status, "statusUpdateTime": "0001-01-01T00:00:00Z",
		"connectionState": "Disconnected", "lastActivityTime": "0001-01-01T00:00:00Z", "cloudToDeviceMessageCount": 0,
		"authenticationType": d.authType, "version": d.twinVersion,
		"x509Thumbprint": map[string]any{"primaryThumbprint": nilIfEmpty(d.primaryThumb), "secondaryThumbprint": nilIfEmpty(d.secondaryThumb)},
		"capabilities":   map[string]any{"iotEdge": d.iotEdge},
		"tags":           deepCopy(d.tags),
		"properties": map[string]any{
			"desired":  desired,
			"reported": map[string]any{"$metadata": map[string]any{"$lastUpdated": "0001-01-01T00:00:00Z"}, "$version": 1},
		},
	}
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func (h *Hub) getTwin(id string) (any, *apiError) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.devices[id]
	if !ok {
		return nil, errorf(404, "DeviceNotFound", "Device %s not found", id)
	}
	h.counts["getTwin"]++
	return d.twinBody(), nil
}

// writeTwin patches (merge; null removes) or replaces a twin's tags and
// desired properties. Reported properties cannot be written.
func (h *Hub) writeTwin(id, ifMatch string, raw []byte, replace bool) (any, *apiError) {
	var in struct {
		Tags       map[string]any `json:"tags"`
		Properties *struct {
			Desired  map[string]any `json:"desired"`
			Reported map[string]any `json:"reported"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, errorf(400, "ArgumentInvalid", "the body is not a twin: %v", err)
	}
	var desired map[string]any
	if in.Properties != nil {
		if in.Properties.Reported != nil {
			return nil, errorf(400, "ArgumentInvalid", "reported properties cannot be written by the service")
		}
		desired = in.Properties.Desired
	}
	for name, part := range map[string]map[string]any{"tags": in.Tags, "desired properties": desired} {
		if err := validTwinPart(part, 1); err != "" {
			return nil, errorf(400, "ArgumentInvalid", "%s: %s", name, err)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.devices[id]
	if !ok {
		return nil, errorf(404, "DeviceNotFound", "Device %s not found", id)
	}
	if _, matched := matchETag(ifMatch, d.twinETag); !matched {
		return nil, errorf(412, "PreconditionFailed", "Precondition failed: the twin's etag does not match")
	}
	if replace {
		d.tags = pruneNulls(deepCopy(in.Tags))
		d.desired = pruneNulls(deepCopy(desired))
		h.counts["replaceTwin"]++
	} else {
		merge(d.tags, in.Tags)
		merge(d.desired, desired)
		h.counts["patchTwin"]++
	}
	if d.tags == nil {
		d.tags = map[string]any{}
	}
	if d.desired == nil {
		d.desired = map[string]any{}
	}
	if desired != nil || replace {
		d.desiredVersion++
	}
	d.twinVersion++
	d.twinETag = h.nextETag()
	return d.twinBody(), nil
}

// validTwinPart applies the twin rules: keys of 1-1024 bytes without
// control characters, '.', '$' or space; values that are objects, strings,
// numbers, booleans or null (no arrays); depth at most 10.
func validTwinPart(m map[string]any, depth int) string {
	if depth > 10 {
		return "nested deeper than 10 levels"
	}
	for k, v := range m {
		if k == "" || len(k) > 1024 || strings.ContainsAny(k, ".$ ") {
			return fmt.Sprintf("key %q is not allowed", k)
		}
		for _, c := range k {
			if c < 0x20 || c == 0x7f {
				return fmt.Sprintf("key %q has a control character", k)
			}
		}
		switch x := v.(type) {
		case []any:
			return fmt.Sprintf("%q is an array; arrays are not allowed", k)
		case map[string]any:
			if e := validTwinPart(x, depth+1); e != "" {
				return e
			}
		}
	}
	return ""
}

// merge applies a patch: members set to null are removed, objects merge.
func merge(dst, patch map[string]any) {
	for k, v := range patch {
		switch x := v.(type) {
		case nil:
			delete(dst, k)
		case map[string]any:
			sub, ok := dst[k].(map[string]any)
			if !ok {
				sub = map[string]any{}
				dst[k] = sub
			}
			merge(sub, x)
		default:
			dst[k] = v
		}
	}
}

// pruneNulls drops null members (a replaced twin stores no nulls).
func pruneNulls(m map[string]any) map[string]any {
	for k, v := range m {
		switch x := v.(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			pruneNulls(x)
		}
	}
	return m
}

func deepCopy(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	b, _ := json.Marshal(m)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}
