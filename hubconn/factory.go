package hubconn

import (
	"fmt"
	"net/http"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// Factory builds the connector of a linked hub from its record: the IoT
// Hub connector when the hub has a connection string, the webhook
// connector when it has a hand-off webhook, none when it has neither (the
// hub is only allocated). The provisioning service is given one.
type Factory interface {
	// For returns h's connector, nil (and no error) when h has none.
	For(h *store.LinkedHub) (Connector, error)
}

// HTTPFactory builds the connectors that speak HTTPS.
type HTTPFactory struct {
	// Client makes every request (its transport holds the TLS roots and
	// the client certificate); nil: the default transport.
	Client *http.Client
	// UserAgent is sent with each request (default "dpsd").
	UserAgent string
	// RequestTimeout bounds one request (default DefaultRequestTimeout).
	RequestTimeout time.Duration
}

// For implements Factory.
func (f *HTTPFactory) For(h *store.LinkedHub) (Connector, error) {
	switch {
	case h.ConnectionString != "" && h.Webhook != nil:
		return nil, fmt.Errorf("hubconn: linked hub %s has both a connection string and a webhook", h.Name)
	case h.ConnectionString != "":
		cs, err := ParseConnectionString(h.ConnectionString)
		if err != nil {
			return nil, fmt.Errorf("linked hub %s: %w", h.Name, err)
		}
		return NewIoTHub(cs, Options{Client: f.Client, UserAgent: f.UserAgent, RequestTimeout: f.RequestTimeout}), nil
	case h.Webhook != nil:
		w, err := NewWebhook(h.Name, h.Webhook.URL, h.Webhook.Secret, Options{Client: f.Client, UserAgent: f.UserAgent, RequestTimeout: f.RequestTimeout})
		if err != nil {
			return nil, fmt.Errorf("linked hub %s: %w", h.Name, err)
		}
		return w, nil
	}
	return nil, nil
}
