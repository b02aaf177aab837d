package api

// Linked IoT hubs, a dpsd extension of the service API (the cloud service
// manages them through Azure Resource Manager, not its data plane):
//
//	GET    /linkedHubs             every linked hub (read right)
//	GET    /linkedHubs/{hostName}  one (read right)
//	PUT    /linkedHubs/{hostName}  create or replace, If-Match (write right)
//	DELETE /linkedHubs/{hostName}  If-Match (write right)
//
// As with enrollment keys, answers never carry a secret: the connection
// string is answered without its SharedAccessKey and the hand-off
// webhook without its secret, and a PUT that leaves them out (a record
// read, changed and written back) keeps the stored ones.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/tpmdps/dpsd/hubconn"
	"github.com/tpmdps/dpsd/internal/jsonlimit"
	"github.com/tpmdps/dpsd/store"
)

// linkedHubIn is the request form of a linked hub: server-managed fields
// a client may send back after a GET are ignored.
type linkedHubIn struct {
	store.LinkedHub
	CreatedAt json.RawMessage `json:"createdDateTimeUtc"`
	UpdatedAt json.RawMessage `json:"lastUpdatedDateTimeUtc"`
	ETag      json.RawMessage `json:"etag"`
}

// DecodeLinkedHub decodes a linked hub request body (untrusted bytes). It
// does not validate; see ValidateLinkedHub.
func DecodeLinkedHub(data []byte) (*store.LinkedHub, error) {
	if err := jsonlimit.CheckDepth(data, MaxJSONDepth); err != nil {
		return nil, &apiError{code: codeMalformedJSON, msg: err.Error()}
	}
	var in linkedHubIn
	if err := json.Unmarshal(data, &in); err != nil {
		return nil, jsonError("linked hub", err)
	}
	h := in.LinkedHub
	h.ETag = ""
	return &h, nil
}

// ValidateLinkedHub checks h (written at the path's host name pathName)
// and keeps the secrets of prev (the stored hub, or nil) that h leaves
// out: a connection string without SharedAccessKey for the same host and
// policy, a webhook without its secret.
func ValidateLinkedHub(h *store.LinkedHub, pathName string, prev *store.LinkedHub) error {
	if h.Name == "" {
		h.Name = pathName
	}
	if pathName != "" && !strings.EqualFold(h.Name, pathName) {
		return invalid("name in the body differs from the host name in the path")
	}
	if err := checkHubName(h.Name); err != nil {
		return err
	}
	if h.AllocationWeight != 0 && (h.AllocationWeight < store.MinAllocationWeight || h.AllocationWeight > store.MaxAllocationWeight) {
		return invalid("allocationWeight must be between %d and %d", store.MinAllocationWeight, store.MaxAllocationWeight)
	}
	switch h.X509Identity {
	case "", store.X509SelfSigned, store.X509CertificateAuthority:
	default:
		return invalid("dpsdX509Identity must be %s or %s", store.X509SelfSigned, store.X509CertificateAuthority)
	}
	if h.ConnectionString != "" && h.Webhook != nil {
		return invalid("a linked hub is registered with either a connectionString (Azure IoT Hub) or a dpsdWebhook, not both")
	}
	if h.ConnectionString != "" {
		if err := validateHubConnectionString(h, prev); err != nil {
			return err
		}
	}
	if h.Webhook != nil {
		return validateHubWebhook(h, prev)
	}
	return nil
}

// validateHubConnectionString checks h's connection string (its HostName
// must be the hub's), completing it with prev's key when it has none.
func validateHubConnectionString(h *store.LinkedHub, prev *store.LinkedHub) error {
	cs, err := hubconn.ParseConnectionString(h.ConnectionString)
	if err != nil && prev != nil && prev.ConnectionString != "" && !hasSharedAccessKey(h.ConnectionString) {
		old, perr := hubconn.ParseConnectionString(prev.ConnectionString)
		if perr == nil && strings.EqualFold(hubconn.RedactConnectionString(h.ConnectionString), old.Redacted()) {
			h.ConnectionString = prev.ConnectionString
			cs, err = old, nil
		}
	}
	if err != nil {
		return &apiError{code: codeInvalidArgument, msg: "connectionString: " + strings.TrimPrefix(err.Error(), "hubconn: "), err: err}
	}
	if !strings.EqualFold(cs.HostName, h.Name) {
		return invalid("the connectionString's HostName %q is not the hub's name %q", cs.HostName, h.Name)
	}
	return nil
}

// hasSharedAccessKey reports whether a connection string names a key.
func hasSharedAccessKey(s string) bool {
	for _, part := range strings.Split(s, ";") {
		name, _, _ := strings.Cut(strings.TrimSpace(part), "=")
		if strings.EqualFold(strings.TrimSpace(name), "SharedAccessKey") {
			return true
		}
	}
	return false
}

// validateHubWebhook checks a hand-off webhook (https; a secret of 32+
// bytes, prev's when left out).
func validateHubWebhook(h *store.LinkedHub, prev *store.LinkedHub) error {
	w := h.Webhook
	u, err := url.Parse(w.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return invalid("dpsdWebhook.url must be an https URL")
	}
	if w.Secret == "" && prev != nil && prev.Webhook != nil {
		w.Secret = prev.Webhook.Secret
	}
	if k, err := base64.StdEncoding.DecodeString(w.Secret); err != nil || len(k) < hubconn.MinWebhookSecret {
		return invalid("dpsdWebhook.secret must be base64 of at least %d random bytes", hubconn.MinWebhookSecret)
	}
	return nil
}

// checkHubName validates a hub's host name (from the path or the body).
func checkHubName(name string) error {
	if name == "" {
		return invalid("the hub's host name is required")
	}
	if err := validateHostName("name", name); err != nil {
		return invalid("%v", err)
	}
	return nil
}

// linkedHubView is h as answers carry it: without its secrets.
func linkedHubView(h *store.LinkedHub) *store.LinkedHub {
	c := *h
	if c.ConnectionString != "" {
		c.ConnectionString = hubconn.RedactConnectionString(c.ConnectionString)
	}
	if c.Webhook != nil {
		w := *c.Webhook
		w.Secret = ""
		c.Webhook = &w
	}
	return &c
}

func (h *handler) listLinkedHubs(w http.ResponseWriter, r *http.Request, rq *request) {
	hubs, err := h.store.ListLinkedHubs(r.Context())
	if err != nil {
		h.writeError(w, rq, storeError(err, codeLinkedHubNotFound, "linked hub"))
		return
	}
	out := make([]*store.LinkedHub, 0, len(hubs))
	for _, hub := range hubs {
		out = append(out, linkedHubView(hub))
	}
	w.Header().Set("x-ms-item-type", "LinkedHub")
	h.writeJSON(w, http.StatusOK, out)
}

func (h *handler) getLinkedHub(w http.ResponseWriter, r *http.Request, rq *request, name string) {
	if err := checkHubName(name); err != nil {
		h.writeError(w, rq, err)
		return
	}
	hub, err := h.store.GetLinkedHub(r.Context(), name)
	if err != nil {
		h.writeError(w, rq, storeError(err, codeLinkedHubNotFound, "linked hub"))
		return
	}
	setETag(w, hub.ETag)
	h.writeJSON(w, http.StatusOK, linkedHubView(hub))
}

func (h *handler) putLinkedHub(w http.ResponseWriter, r *http.Request, rq *request, name string) {
	if err := checkHubName(name); err != nil {
		h.writeError(w, rq, err)
		return
	}
	body, err := readBody(w, r, h.cfg.MaxBodyBytes)
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	hub, err := DecodeLinkedHub(body)
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	stored, aerr := h.writeLinkedHub(r.Context(), rq, hub, name, ifMatch(r))
	if aerr != nil {
		h.writeError(w, rq, aerr)
		return
	}
	setETag(w, stored.ETag)
	h.writeJSON(w, http.StatusOK, linkedHubView(stored))
}

// writeLinkedHub validates hub against the stored one and writes it.
func (h *handler) writeLinkedHub(ctx context.Context, rq *request, hub *store.LinkedHub, name, etag string) (*store.LinkedHub, *apiError) {
	prev, err := h.store.GetLinkedHub(ctx, name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		prev = nil
	case err != nil:
		return nil, storeError(err, codeLinkedHubNotFound, "linked hub")
	}
	if err := ValidateLinkedHub(hub, name, prev); err != nil {
		return nil, asAPIError(err)
	}
	if prev == nil {
		all, err := h.store.ListLinkedHubs(ctx)
		if err != nil {
			return nil, storeError(err, codeLinkedHubNotFound, "linked hub")
		}
		if len(all) >= store.MaxLinkedHubs {
			return nil, errorf(codeQuotaExceeded, "the service allows at most %d linked hubs: unlink one before linking another", store.MaxLinkedHubs)
		}
	}
	stored, err := h.store.PutLinkedHub(ctx, hub, etag)
	if err != nil {
		return nil, storeError(err, codeLinkedHubNotFound, "linked hub")
	}
	h.audit(rq, changeAction(prev != nil), "linkedHub", strings.ToLower(stored.Name), stored.ETag)
	return stored, nil
}

func (h *handler) deleteLinkedHub(w http.ResponseWriter, r *http.Request, rq *request, name string) {
	if err := checkHubName(name); err != nil {
		h.writeError(w, rq, err)
		return
	}
	if err := h.store.DeleteLinkedHub(r.Context(), name, ifMatch(r)); err != nil {
		h.writeError(w, rq, storeError(err, codeLinkedHubNotFound, "linked hub"))
		return
	}
	h.audit(rq, "delete", "linkedHub", strings.ToLower(name), "")
	w.WriteHeader(http.StatusNoContent)
}
