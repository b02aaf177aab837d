package store

import (
	"encoding/json"
	"time"
)

// MaxLinkedHubs is the most linked hubs the service API lets exist, so that
// ListLinkedHubs stays one small read.
const MaxLinkedHubs = 100

// Allocation weights of a linked hub (LinkedHub.AllocationWeight).
const (
	MinAllocationWeight     = 1
	MaxAllocationWeight     = 1000
	DefaultAllocationWeight = 1
)

// LinkedHub is an IoT hub linked to the service, as the cloud service's
// IotHubDefinitionDescription (which it manages through ARM) has it: the
// hub's host name, a connection string whose policy may write the hub's
// registry, an allocation weight and whether the hub takes part in
// allocation. Keyed by its lowercased Name. dpsd may also hand devices off
// to a hub through a webhook (Webhook), for registries that are not Azure
// IoT Hub.
type LinkedHub struct {
	// Name is the hub's host name (the cloud's read-only "name").
	Name string `json:"name"`
	// ConnectionString is "HostName=...;SharedAccessKeyName=...;
	// SharedAccessKey=..." of a policy with RegistryWrite and ServiceConnect.
	// A secret: sealed at rest; the service API never answers its key.
	// Empty: the hub is only allocated, nothing registers devices in it
	// (unless Webhook is set).
	ConnectionString string `json:"connectionString,omitempty"`
	// AllocationWeight is 1-1000; 0 means DefaultAllocationWeight.
	AllocationWeight int `json:"allocationWeight,omitempty"`
	// ApplyAllocationPolicy false keeps the hub out of hashed allocation
	// (an enrollment may still name it); nil means true.
	ApplyAllocationPolicy *bool `json:"applyAllocationPolicy,omitempty"`
	// Webhook, a dpsd extension, hands devices off to a registry that is not
	// Azure IoT Hub: a signed POST per registration.
	Webhook *HubWebhook `json:"dpsdWebhook,omitempty"`
	// X509Identity, a dpsd extension, is how X.509 devices are created in
	// the hub: X509SelfSigned ("" too: the device certificate's thumbprint)
	// or X509CertificateAuthority (the hub verifies the chain to a CA
	// registered with it).
	X509Identity string    `json:"dpsdX509Identity,omitempty"`
	ETag         string    `json:"etag,omitempty"`
	CreatedAt    time.Time `json:"createdDateTimeUtc"`
	UpdatedAt    time.Time `json:"lastUpdatedDateTimeUtc"`
}

// X.509 identities of a linked hub (LinkedHub.X509Identity).
const (
	X509SelfSigned           = "selfSigned"
	X509CertificateAuthority = "certificateAuthority"
)

// HubWebhook is where and how a hand-off webhook is called.
type HubWebhook struct {
	// URL is the https URL the registration is posted to.
	URL string `json:"url"`
	// Secret is the HMAC-SHA256 key that signs each request (base64 of 32+
	// bytes). A secret: sealed at rest, never answered by the service API.
	Secret string `json:"secret,omitempty"`
}

// Weight returns the hub's allocation weight, DefaultAllocationWeight when unset.
func (h *LinkedHub) Weight() int {
	if h.AllocationWeight <= 0 {
		return DefaultAllocationWeight
	}
	return h.AllocationWeight
}

// Allocates reports whether the hub takes part in hashed allocation
// (ApplyAllocationPolicy, true when unset).
func (h *LinkedHub) Allocates() bool {
	return h.ApplyAllocationPolicy == nil || *h.ApplyAllocationPolicy
}

// Job is work of the provisioning service that needs I/O outside the
// service (a custom allocation webhook, registering the device in its
// hub), kept in the store as an outbox: it is written together with the
// operation it completes (EnqueueJob), leased to one worker at a time
// (ClaimJobs), and deleted together with the registration and operation it
// records (FinishJob), so that a crash at any moment leaves it to be done
// again and never done half. The store does not interpret Data.
type Job struct {
	// ID is the id of the operation the job completes.
	ID string `json:"id"`
	// RegistrationID is the device's registration id (for logs).
	RegistrationID string `json:"registrationId"`
	// Data is the service's description of the work (JSON).
	Data json.RawMessage `json:"data"`
	// Secret is key material the work needs (the device's hub key). Sealed
	// at rest; never serialised.
	Secret []byte `json:"-"`
	// Attempts counts the attempts made so far (the service's to keep).
	Attempts int `json:"attempts"`
	// NotBefore is when the job is due.
	NotBefore time.Time `json:"notBefore"`
	// Owner is who holds the job's lease ("" when pending), until
	// LeaseExpires.
	Owner        string    `json:"owner,omitempty"`
	LeaseExpires time.Time `json:"leaseExpires"`
	CreatedAt    time.Time `json:"createdAt"`
}
