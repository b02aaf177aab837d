package main

// dpsd enrollment add|show|list|delete|enable|disable|import

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// runEnrollmentCmd runs "dpsd enrollment ..." (individual enrollments) and
// returns the process exit code: 0 success, 1 failure, 2 usage.
func runEnrollmentCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := map[string]func(context.Context, *adminCmd, []string) error{
		"add":    adminEnrollmentAdd,
		"show":   adminEnrollmentShow,
		"list":   adminEnrollmentList,
		"delete": adminEnrollmentDelete,
		"enable": func(ctx context.Context, c *adminCmd, a []string) error {
			return adminEnrollmentSetStatus(ctx, c, a, true)
		},
		"disable": func(ctx context.Context, c *adminCmd, a []string) error {
			return adminEnrollmentSetStatus(ctx, c, a, false)
		},
		"import": adminEnrollmentImport,
	}
	order := []string{"add", "show", "list", "delete", "enable", "disable", "import"}
	return adminDispatch(ctx, "enrollment", args, stdout, stderr, cmds, order)
}

// adminReadEK reads an endorsement key given as --ek base64 or --ek-file (the
// binary TPM2B_PUBLIC written by tpm2_createek -u, a file holding base64, or
// the JSON that dps-device ek prints).
func adminReadEK(ek, ekFile string) (string, error) {
	if ek != "" && ekFile != "" {
		return "", fmt.Errorf("give --ek or --ek-file, not both")
	}
	if ek != "" {
		if _, err := base64.StdEncoding.DecodeString(ek); err != nil {
			return "", fmt.Errorf("--ek is not base64: %w", err)
		}
		return ek, nil
	}
	if ekFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(ekFile)
	if err != nil {
		return "", fmt.Errorf("reading --ek-file: %w", err)
	}
	if t := strings.TrimSpace(string(b)); t != "" {
		if _, err := base64.StdEncoding.DecodeString(t); err == nil {
			return t, nil
		}
		var printed struct {
			EndorsementKey string `json:"endorsementKey"`
		}
		if strings.HasPrefix(t, "{") {
			if err := json.Unmarshal([]byte(t), &printed); err != nil || printed.EndorsementKey == "" {
				return "", fmt.Errorf("--ek-file %s: JSON without an endorsementKey (the output of dps-device ek has one)", ekFile)
			}
			if _, err := base64.StdEncoding.DecodeString(printed.EndorsementKey); err != nil {
				return "", fmt.Errorf("--ek-file %s: endorsementKey is not base64: %w", ekFile, err)
			}
			return printed.EndorsementKey, nil
		}
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// adminReadCert reads a certificate file (PEM, or DER which is sent as base64).
func adminReadCert(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading certificate: %w", err)
	}
	if strings.Contains(string(b), "-----BEGIN") {
		return string(b), nil
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

func adminEnrollmentAdd(ctx context.Context, c *adminCmd, args []string) error {
	var (
		ek, ekFile, symKey, secKey, cert, hub, deviceID, twin, alloc string
		disabled, edge, replace, requireEKCert                       bool
	)
	fs := c.fs
	fs.StringVar(&ek, "ek", "", "TPM endorsement key: base64 TPM2B_PUBLIC")
	fs.StringVar(&ekFile, "ek-file", "", "TPM endorsement key file (TPM2B_PUBLIC, binary or base64)")
	fs.StringVar(&symKey, "symmetric-key", "", "base64 primary key (symmetric key attestation; generated when no attestation is given)")
	fs.StringVar(&secKey, "secondary-key", "", "base64 secondary key")
	fs.StringVar(&cert, "cert", "", "device certificate file, PEM or DER (X.509 attestation)")
	fs.StringVar(&hub, "iothub", "", "IoT hub host name to assign the device to")
	fs.StringVar(&deviceID, "device-id", "", "device id in the hub (default: the registration id)")
	fs.StringVar(&twin, "initial-twin", "", "initial twin as JSON")
	fs.StringVar(&alloc, "allocation-policy", "", "hashed, geoLatency, static or custom")
	fs.BoolVar(&disabled, "disabled", false, "create the enrollment disabled")
	fs.BoolVar(&edge, "edge", false, "the device is an IoT Edge device")
	fs.BoolVar(&replace, "replace", false, "replace an existing enrollment instead of failing")
	fs.BoolVar(&requireEKCert, "require-ek-cert", false, "with --ek or --ek-file: the device must also send an EK certificate for its EK that chains to the server's tpm-roots")
	var iss issuanceFlags
	iss.add(fs)
	pos, err := c.parse(args, "add [REGISTRATION_ID] [--ek-file F | --ek B64 | --symmetric-key K | --cert F] [flags]\n"+
		"       (with --ek or --ek-file, REGISTRATION_ID defaults to the TPM's, as dps-device ek prints it)", 0, 1)
	if err != nil {
		return err
	}
	ekB64, err := adminReadEK(ek, ekFile)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		if ekB64 == "" {
			c.fs.Usage()
			return errAdminUsage
		}
		raw, _ := base64.StdEncoding.DecodeString(ekB64) // adminReadEK checked it
		pos = append(pos, attest.RegistrationID(raw))
	}
	e := &store.Enrollment{RegistrationID: pos[0], DeviceID: deviceID, EnrollmentSettings: store.EnrollmentSettings{IoTHubHostName: hub, AllocationPolicy: alloc}}
	kinds := 0
	for _, given := range []bool{ekB64 != "", symKey != "" || secKey != "", cert != ""} {
		if given {
			kinds++
		}
	}
	if kinds > 1 {
		return fmt.Errorf("give one attestation: --ek/--ek-file (tpm), --symmetric-key or --cert (x509)")
	}
	if requireEKCert && ekB64 == "" {
		return fmt.Errorf("--require-ek-cert goes with --ek or --ek-file")
	}
	switch {
	case ekB64 != "":
		e.Attestation = store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{EndorsementKey: ekB64, RequireEKCertificate: requireEKCert}}
	case cert != "":
		pemText, err := adminReadCert(cert)
		if err != nil {
			return err
		}
		e.Attestation = store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
			ClientCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: pemText}},
		}}
	default:
		e.Attestation = store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
			PrimaryKey: symKey, SecondaryKey: secKey,
		}}
	}
	if disabled {
		e.ProvisioningStatus = store.StatusDisabled
	}
	if edge {
		e.Capabilities = &store.Capabilities{IoTEdge: true}
	}
	iss.apply(&e.EnrollmentSettings)
	if twin != "" {
		if !json.Valid([]byte(twin)) {
			return fmt.Errorf("--initial-twin is not valid JSON")
		}
		e.InitialTwin = json.RawMessage(twin)
	}
	cl, err := c.opts.client()
	if err != nil {
		return err
	}
	var out *store.Enrollment
	if replace {
		out, err = cl.PutEnrollment(ctx, e, "")
	} else {
		out, err = adminCreateEnrollment(ctx, cl, e)
	}
	if err != nil {
		return err
	}
	// The device needs its keys (perhaps generated just now): show them.
	if err := adminEnrollmentKeys(ctx, cl, out); err != nil {
		return err
	}
	return adminPrintEnrollment(c, out)
}

// adminCreateEnrollment creates e, failing if the registration id is taken
// (a one-item bulk "create", so the check and the write are one server step).
func adminCreateEnrollment(ctx context.Context, cl *apiclient.Client, e *store.Enrollment) (*store.Enrollment, error) {
	res, err := cl.BulkEnrollments(ctx, apiclient.BulkCreate, []*store.Enrollment{e})
	if err != nil {
		return nil, err
	}
	if len(res.Errors) > 0 {
		be := res.Errors[0]
		if be.ErrorCode/1000 == 409 {
			return nil, fmt.Errorf("enrollment %s already exists (use --replace to overwrite it)", e.RegistrationID)
		}
		return nil, &apiclient.APIError{Status: be.ErrorCode / 1000, ErrorCode: be.ErrorCode, Message: be.ErrorStatus}
	}
	return cl.GetEnrollment(ctx, e.RegistrationID)
}

// adminPrintEnrollment shows one enrollment as JSON or as a field list.
func adminPrintEnrollment(c *adminCmd, e *store.Enrollment) error {
	if c.opts.json {
		return adminPrintJSON(c.stdout, e)
	}
	t := newAdminTable(c.stdout)
	t.row("registrationId:", e.RegistrationID)
	t.row("deviceId:", e.DeviceID)
	t.row("attestation:", e.Attestation.Type)
	a := e.Attestation
	switch {
	case a.TPM != nil:
		t.row("endorsementKey:", adminAbbreviate(a.TPM.EndorsementKey))
		if a.TPM.RequireEKCertificate {
			t.row("requireEkCertificate:", "true")
		}
	case a.SymmetricKey != nil:
		adminPrintKeys(t, a.SymmetricKey)
	case a.X509 != nil && a.X509.ClientCertificates != nil && a.X509.ClientCertificates.Primary != nil:
		if info := a.X509.ClientCertificates.Primary.Info; info != nil {
			t.row("certificate:", info.SubjectName)
			t.row("sha256Thumbprint:", info.SHA256Thumbprint)
			t.row("notAfter:", adminFmtTime(info.NotAfter))
		}
	}
	t.row("provisioningStatus:", e.ProvisioningStatus)
	t.row("iotHubHostName:", e.IoTHubHostName)
	if len(e.IoTHubs) > 0 {
		t.row("iotHubs:", strings.Join(e.IoTHubs, ","))
	}
	if e.AllocationPolicy != "" {
		t.row("allocationPolicy:", e.AllocationPolicy)
	}
	if e.Capabilities != nil && e.Capabilities.IoTEdge {
		t.row("iotEdge:", "true")
	}
	adminIssuanceRows(t, &e.EnrollmentSettings)
	t.row("etag:", e.ETag)
	t.row("created:", adminFmtTime(e.CreatedAt))
	t.row("lastUpdated:", adminFmtTime(e.UpdatedAt))
	return t.flush()
}

// adminAbbreviate shortens long base64 values for tables.
func adminAbbreviate(s string) string {
	if len(s) <= 40 {
		return s
	}
	return s[:20] + "..." + s[len(s)-12:]
}

func adminEnrollmentShow(ctx context.Context, c *adminCmd, args []string) error {
	return adminShow(ctx, c, args, "REGISTRATION_ID", (*apiclient.Client).GetEnrollment, adminEnrollmentKeys, adminPrintEnrollment)
}

// adminEnrollmentKeys fills in e's symmetric keys from the service's
// attestation mechanism (reads never carry them). Other attestations are
// complete already.
func adminEnrollmentKeys(ctx context.Context, cl *apiclient.Client, e *store.Enrollment) error {
	if e.Attestation.Type != store.AttestationSymmetricKey {
		return nil
	}
	a, err := cl.GetEnrollmentAttestation(ctx, e.RegistrationID)
	if err != nil {
		return fmt.Errorf("reading the keys of %s: %w", e.RegistrationID, err)
	}
	e.Attestation = *a
	return nil
}

func adminEnrollmentList(ctx context.Context, c *adminCmd, args []string) error {
	pageSize := c.fs.Int("page-size", 1000, "enrollments fetched per request")
	if _, err := c.parse(args, "list [--json] [--page-size N]", 0, 0); err != nil {
		return err
	}
	cl, err := c.opts.client()
	if err != nil {
		return err
	}
	var all []*store.Enrollment
	var t *adminTable
	if !c.opts.json {
		t = newAdminTable(c.stdout, "REGISTRATION ID", "ATTESTATION", "STATUS", "IOT HUB", "DEVICE ID", "LAST UPDATED")
	}
	err = cl.EachEnrollment(ctx, *pageSize, func(e *store.Enrollment) error {
		if t == nil {
			all = append(all, e)
			return nil
		}
		t.row(e.RegistrationID, e.Attestation.Type, e.ProvisioningStatus, e.IoTHubHostName, e.DeviceID, adminFmtTime(e.UpdatedAt))
		return nil
	})
	if err != nil {
		return err
	}
	if t == nil {
		if all == nil {
			all = []*store.Enrollment{}
		}
		return adminPrintJSON(c.stdout, all)
	}
	return t.flush()
}

func adminEnrollmentDelete(ctx context.Context, c *adminCmd, args []string) error {
	return adminDelete(ctx, c, args, "enrollment", "REGISTRATION_ID", (*apiclient.Client).DeleteEnrollment)
}

// adminEnrollmentSetStatus enables or disables an enrollment with a
// conditional update, so that a concurrent change is not overwritten.
func adminEnrollmentSetStatus(ctx context.Context, c *adminCmd, args []string, enable bool) error {
	verb := "disable"
	status := store.StatusDisabled
	if enable {
		verb, status = "enable", store.StatusEnabled
	}
	pos, err := c.parse(args, verb+" REGISTRATION_ID", 1, 1)
	if err != nil {
		return err
	}
	cl, err := c.opts.client()
	if err != nil {
		return err
	}
	e, err := cl.GetEnrollment(ctx, pos[0])
	if err != nil {
		return err
	}
	e.ProvisioningStatus = status
	out, err := cl.PutEnrollment(ctx, e, e.ETag)
	if err != nil {
		return err
	}
	if c.opts.json {
		return adminPrintJSON(c.stdout, out)
	}
	fmt.Fprintf(c.stdout, "enrollment %s %sd (etag %s)\n", out.RegistrationID, verb, out.ETag)
	return nil
}
