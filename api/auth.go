package api

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/tpmdps/dpsd/attest"
)

// Rights are what a shared access policy allows, as bit flags.
type Rights uint8

// Policy rights. DPS splits them finer (EnrollmentRead, EnrollmentWrite,
// RegistrationStatusRead, ...); here read covers every GET and query and
// write covers every PUT, DELETE and bulk operation.
const (
	// RightRead allows reading enrollments, groups and registration states.
	RightRead Rights = 1 << iota
	// RightWrite allows creating, changing and deleting them.
	RightWrite
	// RightAll is read and write (the default provisioningserviceowner policy).
	RightAll = RightRead | RightWrite
)

// DefaultPolicyName is the name of the owner policy in DPS connection strings.
const DefaultPolicyName = "provisioningserviceowner"

// ReadOnlyPolicyName is the policy dpsd generates with read rights only, for
// monitoring and inventory tools.
const ReadOnlyPolicyName = "provisioningservicereader"

// Policy is a named shared access key. Tokens name it in skn and are signed
// with Key (the decoded bytes of the connection string's SharedAccessKey).
type Policy struct {
	Name   string
	Key    []byte
	Rights Rights
}

// authorize verifies the service SAS token of r and that its policy grants
// need; it returns the policy name. Every failure is a 401 in the DPS shape
// (403 when the token is good but the policy lacks the right), and says no
// more than necessary.
func (h *handler) authorize(r *http.Request, need Rights) (string, error) {
	hdr := strings.TrimSpace(r.Header.Get("Authorization"))
	if hdr == "" {
		return "", errorf(codeUnauthorized, "authorization required: send a SharedAccessSignature token")
	}
	tok, err := attest.ParseSASToken(hdr)
	if err != nil {
		return "", &apiError{code: codeUnauthorized, msg: "malformed SharedAccessSignature token", err: err}
	}
	if tok.KeyName == "" {
		return "", errorf(codeUnauthorized, "the token must name its policy (skn)")
	}
	var pol *Policy
	for i := range h.policies {
		if strings.EqualFold(h.policies[i].Name, tok.KeyName) {
			pol = &h.policies[i]
			break
		}
	}
	if pol == nil {
		return "", errorf(codeUnauthorized, "unauthorized: unknown policy or bad signature")
	}
	sp := attest.SASPolicy{ClockSkew: DefaultClockSkew, MaxLifetime: h.cfg.MaxTokenLifetime}
	if err := tok.Verify(pol.Key, h.cfg.HostName, h.now(), sp); err != nil {
		return "", &apiError{code: codeUnauthorized, msg: "unauthorized: unknown policy, bad signature or expired token", err: err}
	}
	if pol.Rights&need != need {
		return "", errorf(codeForbidden, "policy %q may not perform this operation", pol.Name)
	}
	return pol.Name, nil
}

// ParseRights reads rights from configuration: a comma-separated list of
// "read", "write" or "all", or the DPS permission names (EnrollmentRead,
// RegistrationStatusRead -> read; EnrollmentWrite, RegistrationStatusWrite,
// ServiceConfig -> write), case-insensitively.
func ParseRights(s string) (Rights, error) {
	var r Rights
	for _, f := range strings.Split(s, ",") {
		switch strings.ToLower(strings.TrimSpace(f)) {
		case "read", "enrollmentread", "registrationstatusread":
			r |= RightRead
		case "write", "enrollmentwrite", "registrationstatuswrite", "serviceconfig":
			r |= RightWrite
		case "all", "read,write":
			r |= RightAll
		case "":
		default:
			return 0, fmt.Errorf("api: unknown right %q (read, write or all)", strings.TrimSpace(f))
		}
	}
	if r == 0 {
		return 0, fmt.Errorf("api: no rights in %q", s)
	}
	return r, nil
}

// String renders rights as ParseRights reads them.
func (r Rights) String() string {
	switch r & RightAll {
	case RightAll:
		return "read,write"
	case RightRead:
		return "read"
	case RightWrite:
		return "write"
	}
	return "none"
}
