package provision

// Operational certificates (docs/protocol.md section 4, "Certificates"): a
// device that registers with a certificate signing request gets a
// certificate for the key in it, issued by the Issuer the service was
// given, when its enrollment or group names a credential policy. The
// service decides what the certificate says; the issuer only signs:
//
//   - the request is parsed and checked on the authenticated register
//     (never on a restricted TPM session's, which costs an outsider
//     nothing): its encoding, signature and key (issuer.ParseCSR), and its
//     subject, whose common name must be the registration id, the cloud's
//     rule (compared ignoring case, as registration ids are);
//   - the certificate carries that common name, the O and OU of the
//     enrollment's dpsdCertificatePolicy, a URI naming the device
//     (DeviceURI), clientAuth, and the policy's validity (default 30
//     days); nothing else of the request is copied;
//   - it is recorded with the registration (its thumbprints and serial; the
//     one it replaces is listed as superseded) and the chain goes into the
//     operation, answered in the shape of the field the device used.
//
// A service without an issuer, or an enrollment without a credential
// policy, answers a request with a CSR as the cloud does: the operation
// fails with errorCode 400000 and the exact message IoT Edge's identity
// service matches to register again without the CSR.

import (
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/issuer"
	"github.com/tpmdps/dpsd/store"
)

// CertificateClockSkew backdates an issued certificate's notBefore, so
// that a device whose clock is a little behind accepts it at once.
const CertificateClockSkew = 5 * time.Minute

// ErrorCodeCSRNotConfigured and MsgCSRNotConfigured are the failed
// operation's errorCode and errorMessage when a device sends a CSR that
// its enrollment (or the service) does not issue for. IoT Edge's identity
// service (2021-11-01-preview) recognises the message, exactly, and
// registers again without the CSR.
const (
	ErrorCodeCSRNotConfigured = 400000
	MsgCSRNotConfigured       = "Device sent CSR but it is not configured in the service."
)

// DeviceURIScheme is the scheme of the URI subject alternative name of
// issued certificates.
const DeviceURIScheme = "dpsd"

// DeviceURI is the URI that names a device in its issued certificate:
// dpsd://{idScope}/registrations/{registrationId}, both lowercased (the
// SAS resource of the device, as a URI). Registration ids need no escaping.
func DeviceURI(idScope, registrationID string) *url.URL {
	return &url.URL{Scheme: DeviceURIScheme, Host: strings.ToLower(idScope),
		Path: "/registrations/" + strings.ToLower(registrationID)}
}

// issuancePolicy is what an enrollment or group says about issuing.
type issuancePolicy struct {
	credentialPolicy string // "" = no issuance
	cert             *store.CertificatePolicy
}

// issuanceOf reads the issuance settings of an enrollment or group.
func issuanceOf(s *store.EnrollmentSettings) issuancePolicy {
	return issuancePolicy{credentialPolicy: s.CredentialPolicyName, cert: s.CertificatePolicy}
}

// deviceCSR is a checked certificate signing request of a register body.
type deviceCSR struct {
	field string // store.CSRField2025 or store.CSRField2021
	req   *x509.CertificateRequest
}

// oidCommonName is the subject attribute type of a common name.
var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// parseDeviceCSR reads the CSR of an authenticated register body, if it
// has one, and checks it: ParseCSR's checks, then exactly one common name,
// equal to the registration id ignoring ASCII case. A refusal is a 400 that
// says what was wrong.
func parseDeviceCSR(req RegisterRequest, regID string) (*deviceCSR, error) {
	field, text := store.CSRField2025, req.CSR
	switch {
	case req.CSR != "" && req.ClientCertificateCSR != "":
		return nil, badRequest("send the certificate signing request in csr or in clientCertificateCsr, not both")
	case req.CSR == "" && req.ClientCertificateCSR == "":
		return nil, nil
	case req.CSR == "":
		field, text = store.CSRField2021, req.ClientCertificateCSR
	}
	csr, err := issuer.ParseCSR(text)
	if err != nil {
		return nil, badRequest(field + ": " + err.Error())
	}
	cns := 0
	for _, a := range csr.Subject.Names {
		if a.Type.Equal(oidCommonName) {
			cns++
		}
	}
	if cns != 1 {
		return nil, badRequest(fmt.Sprintf("%s: the subject has %d common names; it must have one, the registration id", field, cns))
	}
	if !asciiEqualFold(csr.Subject.CommonName, regID) {
		return nil, badRequest(fmt.Sprintf("%s: the subject common name %q is not the registration id", field, csr.Subject.CommonName))
	}
	return &deviceCSR{field: field, req: csr}, nil
}

// asciiEqualFold reports whether a and b are equal ignoring ASCII case
// only. strings.EqualFold also folds other letters onto ASCII ones (the
// Kelvin sign onto k), which would let a certificate name a device in
// letters no registration id has.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// csrNotConfigured answers a register with a CSR that is not issued for:
// an operation that failed with ErrorCodeCSRNotConfigured, written alone
// (the registration record is left as it was), then the usual 202.
func (s *Service) csrNotConfigured(ctx context.Context, id Identity, csr *deviceCSR, reason string, now time.Time, trackingID string) (Response, error) {
	opID, err := newOperationID(s.cfg.Rand)
	if err != nil {
		return Response{}, err
	}
	op := &store.Operation{
		ID: opID, RegistrationID: id.RegistrationID, Status: store.RegistrationFailed,
		ErrorCode: ErrorCodeCSRNotConfigured, ErrorMessage: MsgCSRNotConfigured, CSRField: csr.field,
		CreatedAt: now, ExpiresAt: now.Add(s.cfg.OperationLifetime),
	}
	if err := s.cfg.Store.PutOperation(ctx, op); err != nil {
		return Response{}, fmt.Errorf("record operation: %w", err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "certificate signing request not issued for",
		slog.String("trackingId", trackingID), slog.String("registrationId", id.RegistrationID),
		slog.String("field", csr.field), slog.String("reason", reason))
	return Response{Status: 202, RetryAfter: s.retryAfter, Body: &OperationStatus{
		OperationID: opID,
		Status:      store.RegistrationAssigning,
	}}, nil
}

// errIssuer marks a failure of the issuer (an internal error: the device
// may retry).
var errIssuer = errors.New("issuer failed")

// issueCertificate has the issuer sign a certificate for csr under policy
// and checks what comes back: at most issuer.MaxChainLength certificates,
// the first for the request's key and subject.
func (s *Service) issueCertificate(ctx context.Context, id Identity, csr *deviceCSR, policy issuancePolicy, now time.Time) ([]*x509.Certificate, error) {
	days := store.DefaultCertificateValidityDays
	subject := pkix.Name{CommonName: csr.req.Subject.CommonName}
	if p := policy.cert; p != nil {
		if p.ValidityDays != 0 {
			days = p.ValidityDays
		}
		if p.Organization != "" {
			subject.Organization = []string{p.Organization}
		}
		if p.OrganizationalUnit != "" {
			subject.OrganizationalUnit = []string{p.OrganizationalUnit}
		}
	}
	if days < store.MinCertificateValidityDays || days > store.MaxCertificateValidityDays {
		return nil, fmt.Errorf("%w: the enrollment's validityDays %d is not %d-%d", errIssuer, days, store.MinCertificateValidityDays, store.MaxCertificateValidityDays)
	}
	req := issuer.Request{
		CSR:       csr.req,
		PublicKey: csr.req.PublicKey,
		Subject:   subject,
		URIs:      []*url.URL{DeviceURI(s.cfg.IDScope, id.RegistrationID)},
		NotBefore: now.Add(-CertificateClockSkew),
		NotAfter:  now.Add(time.Duration(days) * 24 * time.Hour),
	}
	chain, err := s.cfg.Issuer.Issue(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errIssuer, err)
	}
	if len(chain) == 0 || len(chain) > issuer.MaxChainLength {
		return nil, fmt.Errorf("%w: a chain of %d certificates (1-%d)", errIssuer, len(chain), issuer.MaxChainLength)
	}
	leaf := chain[0]
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(csr.req.PublicKey) || leaf.Subject.CommonName != subject.CommonName {
		return nil, fmt.Errorf("%w: the certificate returned is not for the request's key and subject", errIssuer)
	}
	return chain, nil
}

// supersede returns the superseded list of a record that replaces prev's
// current certificate (if any) with a new one at now: the replaced one
// first, then prev's list, at most store.MaxSupersededCertificates.
func supersede(prev *store.X509CertificateInfo, list []store.SupersededCertificate, now time.Time) []store.SupersededCertificate {
	out := make([]store.SupersededCertificate, 0, min(len(list)+1, store.MaxSupersededCertificates))
	if prev != nil {
		out = append(out, store.SupersededCertificate{SerialNumber: prev.SerialNumber, SHA256Thumbprint: prev.SHA256Thumbprint,
			NotAfter: prev.NotAfter, SupersededAt: now})
	}
	for _, c := range list {
		if len(out) == store.MaxSupersededCertificates {
			break
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// issuedChainState puts an operation's issued chain into the final
// registrationState in the shape of the field the device used: for csr,
// issuedCertificateChain, an array of base64 DER, leaf first; for
// clientCertificateCsr, issuedClientCertificate, one PEM text, leaf first.
func issuedChainState(st *RegistrationState, op *store.Operation) {
	if len(op.IssuedCertificateChain) == 0 {
		return
	}
	if op.CSRField == store.CSRField2021 {
		var b strings.Builder
		for _, der := range op.IssuedCertificateChain {
			b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		}
		st.IssuedClientCertificate = b.String()
		return
	}
	st.IssuedCertificateChain = make([]string, len(op.IssuedCertificateChain))
	for i, der := range op.IssuedCertificateChain {
		st.IssuedCertificateChain[i] = base64.StdEncoding.EncodeToString(der)
	}
}
