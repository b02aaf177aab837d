package api

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/tpmdps/dpsd/allocator"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// The size of a generated symmetric key (decoded bytes) and other bounds.
const (
	generatedKeyBytes = 32
	maxIDLength       = attest.MaxRegistrationIDLen
	maxHostNameLength = 253
)

// ValidateID checks the DPS rules for a registration id or enrollment group id
// (docs/protocol.md section 2): its error is attest.ValidateRegistrationID's
// (attest.ErrInvalidRegistrationID). Ids are case-insensitive; the service
// stores them lowercased.
func ValidateID(id string) error {
	return attest.ValidateRegistrationID(id)
}

// validateDeviceID checks the IoT Hub device id rules: up to 128 ASCII
// characters, letters, digits and - . + % _ # * ? ! ( ) , : = @ $ '.
func validateDeviceID(id string) error {
	if len(id) > maxIDLength {
		return fmt.Errorf("deviceId longer than %d characters", maxIDLength)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("-.+%_#*?!(),:=@$'", rune(c)) {
			return fmt.Errorf("deviceId has a character not allowed by IoT Hub")
		}
	}
	return nil
}

// validateHostName loosely checks an IoT hub host name (optionally with :port).
func validateHostName(field, h string) error {
	if len(h) > maxHostNameLength {
		return fmt.Errorf("%s too long", field)
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == ':' {
			continue
		}
		return fmt.Errorf("%s %q is not a host name", field, h)
	}
	return nil
}

// validateCommon checks the settings that enrollments and groups share
// apart from the attestation, and applies the defaults (provisioningStatus
// enabled, initialTwin null removed). prev is the record being replaced
// (nil if none): a webhook URL answered masked and written back keeps
// prev's function key.
func validateCommon(es *store.EnrollmentSettings, prev *store.EnrollmentSettings) error {
	status, hub, hubs, alloc, twin, custom := &es.ProvisioningStatus, es.IoTHubHostName, es.IoTHubs, es.AllocationPolicy,
		&es.InitialTwin, es.CustomAllocationDefinition
	switch *status {
	case "":
		*status = store.StatusEnabled
	case store.StatusEnabled, store.StatusDisabled:
	default:
		return invalid("provisioningStatus must be %q or %q", store.StatusEnabled, store.StatusDisabled)
	}
	if hub != "" {
		if err := validateHostName("iotHubHostName", hub); err != nil {
			return invalid("%v", err)
		}
	}
	for _, h := range hubs {
		if err := validateHostName("iotHubs entry", h); err != nil {
			return invalid("%v", err)
		}
	}
	switch alloc {
	case "", "hashed", "geoLatency", "static", "custom":
	default:
		return invalid("allocationPolicy must be hashed, geoLatency, static or custom")
	}
	if alloc == "custom" && (custom == nil || custom.WebhookURL == "") {
		return invalid("allocationPolicy custom needs customAllocationDefinition.webhookUrl")
	}
	if custom != nil {
		if err := validateCustomAllocation(custom, prev); err != nil {
			return err
		}
	}
	t := bytes.TrimSpace(*twin)
	switch {
	case len(t) == 0 || string(t) == "null":
		*twin = nil
	case t[0] != '{':
		return invalid("initialTwin must be a JSON object")
	}
	return validateIssuance(es)
}

// Bounds of the issuance settings.
const (
	maxCredentialPolicyName = 64
	// maxSubjectAttribute is X.520's upper bound of an organization name
	// (and of an organizational unit name).
	maxSubjectAttribute = 64
)

// validateIssuance checks credentialPolicyName (1-64 letters, digits, '.',
// '_' or '-') and dpsdCertificatePolicy (validityDays 0 or 1-398, O and
// OU of at most 64 printable characters), which has no effect without a
// credentialPolicyName and is refused alone, so that an operator is not
// misled. An empty policy object is dropped.
func validateIssuance(es *store.EnrollmentSettings) error {
	if n := es.CredentialPolicyName; n != "" {
		if len(n) > maxCredentialPolicyName {
			return invalid("credentialPolicyName is longer than %d characters", maxCredentialPolicyName)
		}
		for i := 0; i < len(n); i++ {
			c := n[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				return invalid("credentialPolicyName may hold only letters, digits, '.', '_' and '-'")
			}
		}
	}
	p := es.CertificatePolicy
	if p == nil {
		return nil
	}
	if *p == (store.CertificatePolicy{}) {
		es.CertificatePolicy = nil
		return nil
	}
	if es.CredentialPolicyName == "" {
		return invalid("dpsdCertificatePolicy has no effect without credentialPolicyName (which turns certificate issuance on)")
	}
	if p.ValidityDays != 0 && (p.ValidityDays < store.MinCertificateValidityDays || p.ValidityDays > store.MaxCertificateValidityDays) {
		return invalid("dpsdCertificatePolicy.validityDays must be %d-%d (0: the default, %d)",
			store.MinCertificateValidityDays, store.MaxCertificateValidityDays, store.DefaultCertificateValidityDays)
	}
	for _, f := range []struct{ name, v string }{{"organization", p.Organization}, {"organizationalUnit", p.OrganizationalUnit}} {
		if utf8.RuneCountInString(f.v) > maxSubjectAttribute {
			return invalid("dpsdCertificatePolicy.%s is longer than %d characters", f.name, maxSubjectAttribute)
		}
		if !utf8.ValidString(f.v) || strings.IndexFunc(f.v, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
			return invalid("dpsdCertificatePolicy.%s has a character that is not printable", f.name)
		}
	}
	return nil
}

// validateTPM checks that the EK (and the SRK, if given) are base64 TPM2B_PUBLIC
// keys that parse strictly.
func validateTPM(t *store.TPMAttestation) error {
	if t == nil || t.EndorsementKey == "" {
		return invalid("attestation.tpm.endorsementKey is required")
	}
	for _, k := range []struct{ name, v string }{
		{"endorsementKey", t.EndorsementKey}, {"storageRootKey", t.StorageRootKey},
	} {
		if k.v == "" {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(k.v)
		if err != nil {
			return &apiError{code: codeInvalidArgument, msg: "attestation.tpm." + k.name + " is not base64", err: err}
		}
		if _, err := attest.ParsePublic(raw); err != nil {
			return &apiError{code: codeInvalidArgument, msg: "attestation.tpm." + k.name + " is not a valid TPM2B_PUBLIC: " + plain(err), err: err}
		}
	}
	return nil
}

// validateSymmetricAttestation checks a symmetricKey attestation of an
// enrollment or a group and generates its missing keys, keeping those of
// prev (the settings of the record being replaced, nil if none) when a
// carries none.
func validateSymmetricAttestation(a *store.Attestation, prev *store.EnrollmentSettings, rnd io.Reader) error {
	if a.TPM != nil || a.X509 != nil {
		return invalid("attestation type symmetricKey carries only attestation.symmetricKey")
	}
	var prevKeys *store.SymmetricKeyAttestation
	if prev != nil && prev.Attestation.Type == store.AttestationSymmetricKey {
		prevKeys = prev.Attestation.SymmetricKey
	}
	return validateSymmetricKey(&a.SymmetricKey, prevKeys, rnd)
}

// validateSymmetricKey checks keys with the devices' decoder
// (attest.DecodeSymmetricKey: canonical base64 of 16-64 bytes) and generates the
// missing ones (keeping those of prev, the record being replaced, if any).
func validateSymmetricKey(s **store.SymmetricKeyAttestation, prev *store.SymmetricKeyAttestation, rnd io.Reader) error {
	if *s == nil {
		*s = &store.SymmetricKeyAttestation{}
	}
	k := *s
	if k.PrimaryKey == "" && k.SecondaryKey == "" && prev != nil {
		k.PrimaryKey, k.SecondaryKey = prev.PrimaryKey, prev.SecondaryKey
	}
	for _, f := range []struct {
		name string
		v    *string
	}{{"primaryKey", &k.PrimaryKey}, {"secondaryKey", &k.SecondaryKey}} {
		if *f.v == "" {
			key, err := generateKey(rnd)
			if err != nil {
				return &apiError{code: codeInternal, msg: "generating a key", err: err}
			}
			*f.v = key
			continue
		}
		// The devices' decoder: a key it refuses could never authenticate.
		if _, err := attest.DecodeSymmetricKey(*f.v); err != nil {
			reason := strings.TrimPrefix(err.Error(), attest.ErrInvalidSymmetricKey.Error()+": ")
			return &apiError{code: codeInvalidArgument, err: err, msg: fmt.Sprintf(
				"attestation.symmetricKey.%s is not a valid key: %s (give canonical standard padded base64 of %d-%d bytes, on one line)",
				f.name, reason, attest.MinSymmetricKeyLen, attest.MaxSymmetricKeyLen)}
		}
	}
	return nil
}

// generateKey returns base64 of 32 random bytes.
func generateKey(rnd io.Reader) (string, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	b := make([]byte, generatedKeyBytes)
	if _, err := io.ReadFull(rnd, b); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// validateCertificates parses a primary (required) and secondary certificate
// and fills in their info as DPS reports it.
func validateCertificates(field string, c *store.X509Certificates) error {
	if c == nil || c.Primary == nil || c.Primary.Certificate == "" {
		return invalid("%s.primary.certificate is required", field)
	}
	for _, x := range []struct {
		name string
		v    *store.X509CertificateWithInfo
	}{{"primary", c.Primary}, {"secondary", c.Secondary}} {
		if x.v == nil {
			continue
		}
		if x.v.Certificate == "" {
			if x.name == "secondary" && x.v.Info == nil {
				c.Secondary = nil
				continue
			}
			return invalid("%s.%s.certificate is empty", field, x.name)
		}
		cert, err := attest.ParseCertificate(x.v.Certificate)
		if err != nil {
			return &apiError{code: codeInvalidArgument, msg: fmt.Sprintf("%s.%s.certificate: %s", field, x.name, plain(err)), err: err}
		}
		x.v.Info = store.NewX509CertificateInfo(cert)
	}
	return nil
}

// Bounds of a custom allocation definition's dpsd extensions.
const maxWebhookTimeoutSeconds = 300

// validateCustomAllocation checks a webhook definition: an https URL
// (one answered with its query masked, "?****", and written back keeps
// prev's query: the function key is never answered), a timeout of 0-300
// seconds, a fallback policy of refuse or hashed, a client certificate
// name of the form allocator.ValidClientCertificateName accepts (whether the
// server has it is known when the webhook is called).
func validateCustomAllocation(c *store.CustomAllocationDefinition, prev *store.EnrollmentSettings) error {
	if c.WebhookURL == "" {
		if c.TimeoutSeconds != 0 || c.FallbackPolicy != "" || c.ClientCertificate != "" {
			return invalid("customAllocationDefinition needs a webhookUrl")
		}
		return nil
	}
	if strings.HasSuffix(c.WebhookURL, "?"+allocator.MaskedQuery) && prev != nil && prev.CustomAllocationDefinition != nil &&
		allocator.MaskWebhookURL(prev.CustomAllocationDefinition.WebhookURL) == c.WebhookURL {
		c.WebhookURL = prev.CustomAllocationDefinition.WebhookURL
	}
	u, err := url.Parse(c.WebhookURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return invalid("customAllocationDefinition.webhookUrl must be an https URL")
	}
	if u.RawQuery == allocator.MaskedQuery {
		return invalid("customAllocationDefinition.webhookUrl has a masked query (?****): give the webhook's real URL with its key")
	}
	if c.TimeoutSeconds < 0 || c.TimeoutSeconds > maxWebhookTimeoutSeconds {
		return invalid("customAllocationDefinition.dpsdTimeoutSeconds must be between 0 (the service's default) and %d", maxWebhookTimeoutSeconds)
	}
	switch c.FallbackPolicy {
	case "", store.FallbackRefuse, store.FallbackHashed:
	default:
		return invalid("customAllocationDefinition.dpsdFallbackPolicy must be %s or %s", store.FallbackRefuse, store.FallbackHashed)
	}
	if c.ClientCertificate != "" && !allocator.ValidClientCertificateName(c.ClientCertificate) {
		return invalid("customAllocationDefinition.dpsdClientCertificate must be the name of one of the server's outbound-client-certs: 1-64 letters, digits, '.', '_' or '-'")
	}
	return nil
}
