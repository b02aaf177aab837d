package hubconn

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
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

// SignatureHeader carries a hand-off webhook request's signature:
// "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>".
const SignatureHeader = "X-Dpsd-Signature"

// DeliveryHeader carries an id that is the same for every retry of one
// delivery, so that a receiver can ignore repeats.
const DeliveryHeader = "X-Dpsd-Delivery"

// MinWebhookSecret is the shortest hand-off webhook secret accepted (decoded bytes).
const MinWebhookSecret = 32

// Events of a hand-off webhook.
const (
	EventRegistered = "deviceRegistered"
	EventRemoved    = "deviceRemoved"
)

// WebhookEvent is the body of a hand-off webhook request.
type WebhookEvent struct {
	// Event is EventRegistered or EventRemoved.
	Event string `json:"event"`
	// Hub is the hub's host name (the linked hub's name).
	Hub      string `json:"hub"`
	DeviceID string `json:"deviceId"`
	// Registration describes the registration (absent on EventRemoved).
	Registration *WebhookRegistration `json:"registration,omitempty"`
	// Credential names the credential the device will use, never the
	// credential itself (absent on EventRemoved).
	Credential *CredentialReference `json:"credential,omitempty"`
	// Twin is the twin the device starts with, when the service sets one
	// (initial assignment, or a move).
	Twin *Twin `json:"twin,omitempty"`
	// Timestamp is when the request was signed (RFC 3339).
	Timestamp string `json:"timestamp"`
}

// WebhookRegistration describes the registration to the receiver.
type WebhookRegistration struct {
	RegistrationID    string `json:"registrationId"`
	AttestationType   string `json:"attestationType,omitempty"`
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
	IoTEdge           bool   `json:"iotEdge"`
}

// CredentialReference identifies a device's credential without revealing
// it: the type, for keys a fingerprint of each (base64url of the first 16
// bytes of SHA-256 of the decoded key: the receiver compares it with the
// key it obtained elsewhere, e.g. from the service API's attestation
// mechanism), for certificates their thumbprints (public).
type CredentialReference struct {
	Type                    string `json:"type"`
	PrimaryKeyFingerprint   string `json:"primaryKeyFingerprint,omitempty"`
	SecondaryKeyFingerprint string `json:"secondaryKeyFingerprint,omitempty"`
	PrimaryThumbprint       string `json:"primaryThumbprint,omitempty"`
	SecondaryThumbprint     string `json:"secondaryThumbprint,omitempty"`
}

// KeyFingerprint is the reference of a base64 key in a CredentialReference
// ("" for no key).
func KeyFingerprint(b64 string) string {
	if b64 == "" {
		return ""
	}
	k, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		k = []byte(b64)
	}
	sum := sha256.Sum256(k)
	return base64.RawURLEncoding.EncodeToString(sum[:16])
}

// Webhook is the hand-off connector of a hub whose registry is reached
// through a webhook. Safe for concurrent use.
type Webhook struct {
	hub     string
	url     string
	secret  []byte
	client  *http.Client
	agent   string
	timeout time.Duration
	now     func() time.Time
}

// NewWebhook returns the connector that posts hub's hand-offs to rawURL
// (https only), signed with secret (base64 of MinWebhookSecret+ bytes).
func NewWebhook(hub, rawURL, secret string, opts Options) (*Webhook, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, errors.New("hubconn: the hand-off webhook URL is not an https URL")
	}
	key, err := base64.StdEncoding.DecodeString(secret)
	if err != nil || len(key) < MinWebhookSecret {
		return nil, fmt.Errorf("hubconn: the hand-off webhook secret is not base64 of at least %d bytes", MinWebhookSecret)
	}
	opts = opts.withDefaults()
	return &Webhook{hub: hub, url: rawURL, secret: key, client: opts.Client, agent: opts.UserAgent,
		timeout: opts.RequestTimeout, now: opts.Now}, nil
}

// Register posts EventRegistered.
func (w *Webhook) Register(ctx context.Context, d *Device, twin *Twin) error {
	ref := &CredentialReference{Type: d.Auth.Type}
	switch d.Auth.Type {
	case AuthSAS:
		ref.PrimaryKeyFingerprint, ref.SecondaryKeyFingerprint = KeyFingerprint(d.Auth.PrimaryKey), KeyFingerprint(d.Auth.SecondaryKey)
	case AuthSelfSigned:
		ref.PrimaryThumbprint, ref.SecondaryThumbprint = d.Auth.PrimaryThumbprint, d.Auth.SecondaryThumbprint
	}
	ev := &WebhookEvent{Event: EventRegistered, Hub: w.hub, DeviceID: d.DeviceID, Credential: ref, Twin: twin,
		Registration: &WebhookRegistration{RegistrationID: d.RegistrationID, AttestationType: d.AttestationType,
			EnrollmentGroupID: d.EnrollmentGroupID, IoTEdge: d.IoTEdge}}
	return w.post(ctx, "register device", ev, EventRegistered+"/"+d.DeviceID)
}

// Twin is not supported: a webhook does not answer twins.
func (w *Webhook) Twin(context.Context, string) (*Twin, error) { return nil, ErrUnsupported }

// Remove posts EventRemoved.
func (w *Webhook) Remove(ctx context.Context, deviceID string) error {
	return w.post(ctx, "remove device", &WebhookEvent{Event: EventRemoved, Hub: w.hub, DeviceID: deviceID}, EventRemoved+"/"+deviceID)
}

// post sends one signed event. Any 2xx is success; 408, 429 and 5xx, and
// no answer, are retryable; other statuses are final.
func (w *Webhook) post(ctx context.Context, op string, ev *WebhookEvent, delivery string) error {
	now := w.now()
	ev.Timestamp = now.UTC().Format(time.RFC3339)
	body, err := json.Marshal(ev)
	if err != nil {
		return &Error{Hub: w.hub, Op: op, Message: "encoding the event: " + err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return &Error{Hub: w.hub, Op: op, Message: "the webhook URL is not usable"}
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("User-Agent", w.agent)
	req.Header.Set(SignatureHeader, Sign(w.secret, now, body))
	sum := sha256.Sum256([]byte(w.hub + "\x00" + delivery))
	req.Header.Set(DeliveryHeader, hex.EncodeToString(sum[:16]))
	res, err := w.client.Do(req)
	if err != nil {
		msg := "the webhook could not be reached"
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			msg = fmt.Sprintf("the webhook did not answer within %s", w.timeout)
		}
		return &Error{Hub: w.hub, Op: op, Retryable: true, Message: msg}
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, maxBody))
	if res.StatusCode >= 200 && res.StatusCode <= 299 {
		return nil
	}
	e := &Error{Hub: w.hub, Op: op, Status: res.StatusCode, Retryable: retryableStatus(res.StatusCode), Message: http.StatusText(res.StatusCode)}
	if n, err := strconv.Atoi(strings.TrimSpace(res.Header.Get("Retry-After"))); err == nil && n >= 0 {
		e.RetryAfter = min(time.Duration(n)*time.Second, 5*time.Minute)
	}
	return e
}

// Sign returns the SignatureHeader value of body signed at t with secret.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Errors of Verify.
var (
	ErrBadSignature = errors.New("hubconn: bad webhook signature")
	ErrStale        = errors.New("hubconn: webhook signature too old or too new")
)

// Verify checks a SignatureHeader value for body, as a receiver must: the
// MAC (compared in constant time) and a timestamp within tolerance of now,
// so that a captured request cannot be replayed later.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrBadSignature
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			sig, err := hex.DecodeString(v)
			if err != nil {
				return ErrBadSignature
			}
			sigs = append(sigs, sig)
		}
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrBadSignature
	}
	want := mac(secret, ts, body)
	ok := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			ok = true
		}
	}
	if !ok {
		return ErrBadSignature
	}
	if d := now.Sub(time.Unix(t, 0)); d > tolerance || d < -tolerance {
		return ErrStale
	}
	return nil
}
