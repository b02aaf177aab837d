package provision

// Custom allocation: the request a webhook gets is built when the device
// registers (from the enrollment or group re-read then, and what the
// device sent), kept in the job, and sent by a worker (handoffjob.go); its
// answer is checked here.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// customJob is a custom allocation's part of a job.
type customJob struct {
	// URL is the webhook's URL, function key included (as stored in the
	// enrollment).
	URL            string `json:"url"`
	TimeoutSeconds int    `json:"timeoutSeconds,omitempty"`
	Fallback       string `json:"fallback,omitempty"`
	// ClientCertificate names the client certificate to present.
	ClientCertificate string `json:"clientCertificate,omitempty"`
	// Request is the AllocationRequest to send.
	Request *allocator.Request `json:"request"`
	// Decided is set once the webhook (or the fallback) chose the hub; Twin
	// and Payload are its answer's.
	Decided bool            `json:"decided,omitempty"`
	Twin    json.RawMessage `json:"twin,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// newCustomJob builds the webhook call of a registration: a.linkedHubs
// are the hubs offered.
func newCustomJob(id Identity, src *source, req RegisterRequest, ek, srk *attest.Public, a *allocation) (*customJob, error) {
	def := src.settings().CustomAllocationDefinition
	if def == nil || def.WebhookURL == "" {
		return nil, fmt.Errorf("the allocation policy is custom but there is no customAllocationDefinition.webhookUrl")
	}
	r := &allocator.Request{
		DeviceRuntimeContext: allocator.DeviceRuntimeContext{
			RegistrationID:        id.RegistrationID,
			CurrentIoTHubHostName: a.prevHub,
			CurrentDeviceID:       a.prevDeviceID,
			Payload:               req.Payload,
		},
		LinkedHubs: a.linkedHubs,
	}
	switch {
	case src.enrollment != nil:
		r.IndividualEnrollment = allocator.IndividualEnrollment(src.enrollment)
	case src.group != nil:
		r.EnrollmentGroup = allocator.EnrollmentGroup(src.group)
	}
	switch id.Method {
	case AuthSymmetricKey:
		r.DeviceRuntimeContext.SymmetricKey = &struct{}{}
	case AuthTPM:
		r.DeviceRuntimeContext.TPM = &allocator.TPMContext{}
		if req.TPM != nil {
			r.DeviceRuntimeContext.TPM.EndorsementKey, r.DeviceRuntimeContext.TPM.StorageRootKey = req.TPM.EndorsementKey, req.TPM.StorageRootKey
		}
	case AuthX509:
		if id.Certificate != nil {
			r.DeviceRuntimeContext.X509 = &allocator.X509Context{ClientCertificates: &allocator.X509Certificates{
				Primary: &allocator.X509CertificateInfo{Info: store.NewX509CertificateInfo(id.Certificate)}}}
		}
	}
	return &customJob{URL: def.WebhookURL, TimeoutSeconds: def.TimeoutSeconds, Fallback: def.FallbackPolicy,
		ClientCertificate: def.ClientCertificate, Request: r}, nil
}

// definition is how the webhook is called.
func (c *customJob) definition() allocator.Definition {
	return allocator.Definition{URL: c.URL, Timeout: time.Duration(c.TimeoutSeconds) * time.Second, ClientCertificate: c.ClientCertificate}
}

// checkAnswer returns the hub of a webhook's answer when it is one of the
// hubs offered (as offered: the webhook may change its case), else a
// failure message.
func (c *customJob) checkAnswer(r *allocator.Response) (string, string) {
	for _, h := range c.Request.LinkedHubs {
		if strings.EqualFold(h, r.IoTHubHostName) {
			return h, ""
		}
	}
	return "", fmt.Sprintf("Custom allocation returned hub %q, which is not one of the linked hubs offered (%s)",
		r.IoTHubHostName, strings.Join(c.Request.LinkedHubs, ", "))
}

// fallbackHub is where the fallback policy hashed sends the device: the
// hubs offered that take part in allocation, weighted. "" when none.
func (c *customJob) fallbackHub(snap *hubSnapshot) string {
	var cands []allocator.Hub
	for _, h := range c.Request.LinkedHubs {
		if w, ok := snap.weight(h); ok {
			cands = append(cands, allocator.Hub{Name: h, Weight: w})
		}
	}
	return allocator.Hashed(cands, c.Request.DeviceRuntimeContext.RegistrationID)
}

// secondaryHubKey is the secondary symmetric key of a TPM device's hub
// identity: derived from its hub key, known to nobody else, never used
// (the device signs with its hub key, the primary).
func secondaryHubKey(hubKey []byte) string {
	return base64.StdEncoding.EncodeToString(attest.DeriveDeviceKey(hubKey, "dpsd secondary hub key"))
}
