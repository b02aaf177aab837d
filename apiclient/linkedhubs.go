package apiclient

import (
	"context"
	"net/http"

	"github.com/tpmdps/dpsd/store"
)

// Linked hubs: a dpsd extension of the service API (the cloud service
// manages them through Azure Resource Manager). Answers never carry the
// connection string's key or the hand-off webhook's secret.

// ListLinkedHubs returns every linked hub.
func (c *Client) ListLinkedHubs(ctx context.Context) ([]*store.LinkedHub, error) {
	r, err := c.do(ctx, http.MethodGet, "/linkedHubs", nil, nil)
	if err != nil {
		return nil, err
	}
	return decode[[]*store.LinkedHub](r, "linked hubs")
}

// GetLinkedHub returns the linked hub of a host name.
func (c *Client) GetLinkedHub(ctx context.Context, name string) (*store.LinkedHub, error) {
	r, err := c.do(ctx, http.MethodGet, "/linkedHubs/"+escape(name), nil, nil)
	if err != nil {
		return nil, err
	}
	return decode[*store.LinkedHub](r, "linked hub")
}

// PutLinkedHub links h (or replaces it; ifMatch "" for none, "*" or an
// etag). A connection string without its key, or a webhook without its
// secret, keeps the stored one. It returns the hub as stored, without
// secrets. Needs the write right.
func (c *Client) PutLinkedHub(ctx context.Context, h *store.LinkedHub, ifMatch string) (*store.LinkedHub, error) {
	r, err := c.do(ctx, http.MethodPut, "/linkedHubs/"+escape(h.Name), h, etagHeader(ifMatch))
	if err != nil {
		return nil, err
	}
	return decode[*store.LinkedHub](r, "linked hub")
}

// DeleteLinkedHub unlinks a hub (conditionally when ifMatch is not "").
func (c *Client) DeleteLinkedHub(ctx context.Context, name, ifMatch string) error {
	_, err := c.do(ctx, http.MethodDelete, "/linkedHubs/"+escape(name), nil, etagHeader(ifMatch))
	return err
}
