package allocator

import (
	"encoding/json"
	"net/url"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// Request is the cloud service's AllocationRequest: the body of the POST
// to a custom allocation webhook. Exactly one of IndividualEnrollment and
// EnrollmentGroup is set.
type Request struct {
	IndividualEnrollment *Enrollment          `json:"individualEnrollment,omitempty"`
	EnrollmentGroup      *Enrollment          `json:"enrollmentGroup,omitempty"`
	DeviceRuntimeContext DeviceRuntimeContext `json:"deviceRuntimeContext"`
	// LinkedHubs are the hubs the webhook may choose from: the
	// enrollment's, else every linked hub that takes part in allocation,
	// else (never reprovision, on a re-registration) the current hub only.
	LinkedHubs []string `json:"linkedHubs"`
}

// DeviceRuntimeContext is what the device brought to this registration.
type DeviceRuntimeContext struct {
	RegistrationID string `json:"registrationId"`
	// CurrentIoTHubHostName and CurrentDeviceID are absent on an initial
	// assignment.
	CurrentIoTHubHostName string `json:"currentIotHubHostName,omitempty"`
	CurrentDeviceID       string `json:"currentDeviceId,omitempty"`
	// TPM carries the device's public endorsement and storage root keys.
	TPM *TPMContext `json:"tpm,omitempty"`
	// SymmetricKey is an empty object for a symmetric-key device: no key
	// leaves the service.
	SymmetricKey *struct{} `json:"symmetricKey,omitempty"`
	// X509 describes the device's certificate (the cloud's documentation
	// names the field but not its shape; dpsd sends the X509Attestation
	// shape of the service API, certificate details only).
	X509 *X509Context `json:"x509,omitempty"`
	// Payload is the device's payload, when it sent one.
	Payload json.RawMessage `json:"payload,omitempty"`
}

// TPMContext is a TPM device's public keys (base64 TPM2B_PUBLIC).
type TPMContext struct {
	EndorsementKey string `json:"endorsementKey"`
	StorageRootKey string `json:"storageRootKey,omitempty"`
}

// X509Context is an X.509 device's certificate details, in the shape of
// the service API's X509Attestation.
type X509Context struct {
	ClientCertificates *X509Certificates `json:"clientCertificates,omitempty"`
}

// X509Certificates holds the device certificate's details.
type X509Certificates struct {
	Primary *X509CertificateInfo `json:"primary,omitempty"`
}

// X509CertificateInfo wraps a certificate's details as the service API does.
type X509CertificateInfo struct {
	Info *store.X509CertificateInfo `json:"info,omitempty"`
}

// Enrollment is the individual enrollment or enrollment group echoed to
// the webhook: the cloud's IndividualEnrollment or EnrollmentGroup as the
// service API answers it, without keys, with the etag quoted and the
// webhook URL's query masked. Fields in the cloud's order.
type Enrollment struct {
	RegistrationID             string                      `json:"registrationId,omitempty"`
	DeviceID                   string                      `json:"deviceId,omitempty"`
	EnrollmentGroupID          string                      `json:"enrollmentGroupId,omitempty"`
	Attestation                store.Attestation           `json:"attestation"`
	Capabilities               *store.Capabilities         `json:"capabilities,omitempty"`
	ETag                       string                      `json:"etag,omitempty"`
	ProvisioningStatus         string                      `json:"provisioningStatus,omitempty"`
	ReprovisionPolicy          *store.ReprovisionPolicy    `json:"reprovisionPolicy,omitempty"`
	InitialTwin                json.RawMessage             `json:"initialTwin,omitempty"`
	CreatedDateTimeUTC         string                      `json:"createdDateTimeUtc,omitempty"`
	LastUpdatedDateTimeUTC     string                      `json:"lastUpdatedDateTimeUtc,omitempty"`
	AllocationPolicy           string                      `json:"allocationPolicy,omitempty"`
	IoTHubHostName             string                      `json:"iotHubHostName,omitempty"`
	IoTHubs                    []string                    `json:"iotHubs,omitempty"`
	CustomAllocationDefinition *CustomAllocationDefinition `json:"customAllocationDefinition,omitempty"`
}

// CustomAllocationDefinition is the echoed webhook definition (the cloud's
// two fields; dpsd's extensions stay out).
type CustomAllocationDefinition struct {
	WebhookURL string `json:"webhookUrl"`
	APIVersion string `json:"apiVersion"`
}

// Response is the cloud service's AllocationResponse.
type Response struct {
	// IoTHubHostName must be one of the request's LinkedHubs. JSON names
	// match case-insensitively (iotHubHostname, as one old table spells
	// it, works too).
	IoTHubHostName string `json:"iotHubHostName"`
	// InitialTwin, when not null, replaces the enrollment's initial twin
	// on an initial assignment or a move with reset.
	InitialTwin json.RawMessage `json:"initialTwin,omitempty"`
	// Payload, when not null, is returned to the device
	// (registrationState.payload).
	Payload json.RawMessage `json:"payload,omitempty"`
}

// MaskedQuery replaces a webhook URL's query in echoes and answers.
const MaskedQuery = "****"

// MaskWebhookURL returns u with its query (the function key, ?code=...)
// replaced by "****", as the cloud service echoes it; u unchanged when it
// has no query. A URL that does not parse is masked whole after its
// first "?".
func MaskWebhookURL(u string) string {
	i := strings.IndexByte(u, '?')
	if i < 0 {
		return u
	}
	p, err := url.Parse(u)
	if err != nil || p.RawQuery == "" {
		return u[:i+1] + MaskedQuery
	}
	p.RawQuery, p.Fragment, p.RawFragment = MaskedQuery, "", ""
	return p.String()
}

// formatTime writes a time as DPS does: RFC 3339 UTC, 7 fractional digits.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.0000000Z")
}

// echoSettings fills the fields an enrollment and a group share.
func echoSettings(out *Enrollment, s *store.EnrollmentSettings) {
	out.Attestation = echoAttestation(s.Attestation)
	out.Capabilities = s.Capabilities
	if s.ETag != "" {
		out.ETag = `"` + s.ETag + `"`
	}
	out.ProvisioningStatus = s.ProvisioningStatus
	if out.ProvisioningStatus == "" {
		out.ProvisioningStatus = store.StatusEnabled // what an absent status means
	}
	out.ReprovisionPolicy = s.ReprovisionPolicy
	out.InitialTwin = s.InitialTwin
	out.CreatedDateTimeUTC = formatTime(s.CreatedAt)
	out.LastUpdatedDateTimeUTC = formatTime(s.UpdatedAt)
	out.AllocationPolicy = s.AllocationPolicy
	out.IoTHubHostName = s.IoTHubHostName
	out.IoTHubs = s.IoTHubs
	if d := s.CustomAllocationDefinition; d != nil {
		out.CustomAllocationDefinition = &CustomAllocationDefinition{WebhookURL: MaskWebhookURL(d.WebhookURL), APIVersion: d.APIVersion}
	}
}

// echoAttestation is an attestation as echoed: the type, the TPM's public
// endorsement key, the certificates' details; never a key or a whole
// certificate.
func echoAttestation(a store.Attestation) store.Attestation {
	out := store.Attestation{Type: a.Type}
	switch a.Type {
	case store.AttestationTPM:
		if a.TPM != nil {
			out.TPM = &store.TPMAttestation{EndorsementKey: a.TPM.EndorsementKey}
		}
	case store.AttestationX509:
		if a.X509 != nil {
			out.X509 = &store.X509Attestation{
				ClientCertificates:  infoOnly(a.X509.ClientCertificates),
				SigningCertificates: infoOnly(a.X509.SigningCertificates),
				CAReferences:        a.X509.CAReferences,
			}
		}
	}
	return out
}

// infoOnly keeps the details of certificates and drops the certificates.
func infoOnly(c *store.X509Certificates) *store.X509Certificates {
	if c == nil {
		return nil
	}
	out := &store.X509Certificates{}
	if c.Primary != nil {
		out.Primary = &store.X509CertificateWithInfo{Info: c.Primary.Info}
	}
	if c.Secondary != nil {
		out.Secondary = &store.X509CertificateWithInfo{Info: c.Secondary.Info}
	}
	return out
}

// IndividualEnrollment is e as echoed to a webhook.
func IndividualEnrollment(e *store.Enrollment) *Enrollment {
	out := &Enrollment{RegistrationID: e.RegistrationID, DeviceID: e.DeviceID}
	echoSettings(out, &e.EnrollmentSettings)
	return out
}

// EnrollmentGroup is g as echoed to a webhook.
func EnrollmentGroup(g *store.Group) *Enrollment {
	out := &Enrollment{EnrollmentGroupID: g.EnrollmentGroupID}
	echoSettings(out, &g.EnrollmentSettings)
	return out
}
