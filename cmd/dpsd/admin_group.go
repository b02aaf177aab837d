package main

// dpsd group add|show|list|delete

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/store"
)

// runGroupCmd runs "dpsd group ..." (enrollment groups) and returns the
// process exit code: 0 success, 1 failure, 2 usage.
func runGroupCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := map[string]func(context.Context, *adminCmd, []string) error{
		"add":    adminGroupAdd,
		"show":   adminGroupShow,
		"list":   adminGroupList,
		"delete": adminGroupDelete,
	}
	return adminDispatch(ctx, "group", args, stdout, stderr, cmds, []string{"add", "show", "list", "delete"})
}

func adminGroupAdd(ctx context.Context, c *adminCmd, args []string) error {
	var symKey, secKey, cert, caRef, hub, alloc, tpmRoots, tpmMaker, tpmModel, ekHashes string
	var disabled, edge, replace bool
	fs := c.fs
	fs.StringVar(&symKey, "symmetric-key", "", "base64 group key (generated when no attestation is given)")
	fs.StringVar(&secKey, "secondary-key", "", "base64 secondary group key")
	fs.StringVar(&cert, "cert", "", "signing CA certificate file, PEM or DER (X.509 attestation)")
	fs.StringVar(&caRef, "ca-ref", "", "name of a CA certificate registered with the service (X.509 attestation)")
	fs.StringVar(&tpmRoots, "tpm-roots", "", "directory of TPM manufacturer CA certificates (and CRLs) the devices' EK certificates chain to (TPM attestation): *.pem, *.crt, *.cer, *.der, *.crl; self-signed ones are roots, the others intermediates")
	fs.StringVar(&tpmMaker, "tpm-manufacturer", "", "with --tpm-roots: admit only TPMs of this manufacturer, as their EK certificate names it (e.g. id:494E5443)")
	fs.StringVar(&tpmModel, "tpm-model", "", "with --tpm-roots: admit only TPMs of this model, as their EK certificate names it")
	fs.StringVar(&ekHashes, "ek-hashes", "", "with --tpm-roots: file of the EKs to admit, one hexadecimal SHA-256 of the EK's DER public key per line (dps-device ek prints it as endorsementKeyHash; # starts a comment)")
	fs.StringVar(&hub, "iothub", "", "IoT hub host name to assign devices to")
	fs.StringVar(&alloc, "allocation-policy", "", "hashed, geoLatency, static or custom")
	fs.BoolVar(&disabled, "disabled", false, "create the group disabled")
	fs.BoolVar(&edge, "edge", false, "the devices are IoT Edge devices")
	fs.BoolVar(&replace, "replace", false, "replace an existing group instead of failing")
	var iss issuanceFlags
	iss.add(fs)
	pos, err := c.parse(args, "add GROUP_ID [--symmetric-key K | --cert F | --ca-ref NAME | --tpm-roots DIR] [flags]", 1, 1)
	if err != nil {
		return err
	}
	g := &store.Group{EnrollmentGroupID: pos[0], EnrollmentSettings: store.EnrollmentSettings{IoTHubHostName: hub, AllocationPolicy: alloc}}
	kinds := 0
	for _, given := range []bool{symKey != "" || secKey != "", cert != "", caRef != "", tpmRoots != ""} {
		if given {
			kinds++
		}
	}
	switch {
	case kinds > 1:
		return fmt.Errorf("give one attestation: --symmetric-key, --cert, --ca-ref or --tpm-roots")
	case tpmRoots == "" && (tpmMaker != "" || tpmModel != "" || ekHashes != ""):
		return fmt.Errorf("--tpm-manufacturer, --tpm-model and --ek-hashes go with --tpm-roots")
	case tpmRoots != "":
		a, err := adminTPMGroupAttestation(tpmRoots, tpmMaker, tpmModel, ekHashes)
		if err != nil {
			return err
		}
		g.Attestation = store.Attestation{Type: store.AttestationTPM, TPM: a}
	case cert != "":
		pemText, err := adminReadCert(cert)
		if err != nil {
			return err
		}
		g.Attestation = store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
			SigningCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: pemText}},
		}}
	case caRef != "":
		g.Attestation = store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
			CAReferences: &store.X509CAReferences{Primary: caRef},
		}}
	default:
		g.Attestation = store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
			PrimaryKey: symKey, SecondaryKey: secKey,
		}}
	}
	if disabled {
		g.ProvisioningStatus = store.StatusDisabled
	}
	if edge {
		g.Capabilities = &store.Capabilities{IoTEdge: true}
	}
	iss.apply(&g.EnrollmentSettings)
	cl, err := c.opts.client()
	if err != nil {
		return err
	}
	if !replace {
		res, err := cl.BulkGroups(ctx, "create", []*store.Group{g})
		if err != nil {
			return err
		}
		if len(res.Errors) > 0 {
			if res.Errors[0].ErrorCode/1000 == 409 {
				return fmt.Errorf("enrollment group %s already exists (use --replace to overwrite it)", g.EnrollmentGroupID)
			}
			return fmt.Errorf("creating enrollment group %s: %d: %s", g.EnrollmentGroupID, res.Errors[0].ErrorCode, res.Errors[0].ErrorStatus)
		}
		out, err := cl.GetGroup(ctx, g.EnrollmentGroupID)
		if err != nil {
			return err
		}
		return adminPrintGroupWithKeys(ctx, c, cl, out)
	}
	out, err := cl.PutGroup(ctx, g, "")
	if err != nil {
		return err
	}
	return adminPrintGroupWithKeys(ctx, c, cl, out)
}

// adminPrintGroupWithKeys prints a group just added with its keys (perhaps
// generated just now), which its devices' keys are derived from.
func adminPrintGroupWithKeys(ctx context.Context, c *adminCmd, cl *apiclient.Client, g *store.Group) error {
	if err := adminGroupKeys(ctx, cl, g); err != nil {
		return err
	}
	return adminPrintGroup(c, g)
}

// adminGroupKeys fills in g's symmetric keys from the service's attestation
// mechanism (reads never carry them).
func adminGroupKeys(ctx context.Context, cl *apiclient.Client, g *store.Group) error {
	if g.Attestation.Type != store.AttestationSymmetricKey {
		return nil
	}
	a, err := cl.GetGroupAttestation(ctx, g.EnrollmentGroupID)
	if err != nil {
		return fmt.Errorf("reading the keys of group %s: %w", g.EnrollmentGroupID, err)
	}
	g.Attestation = *a
	return nil
}

// adminPrintGroup shows one enrollment group as JSON or as a field list.
func adminPrintGroup(c *adminCmd, g *store.Group) error {
	if c.opts.json {
		return adminPrintJSON(c.stdout, g)
	}
	t := newAdminTable(c.stdout)
	t.row("enrollmentGroupId:", g.EnrollmentGroupID)
	t.row("attestation:", g.Attestation.Type)
	a := g.Attestation
	switch {
	case a.SymmetricKey != nil:
		adminPrintKeys(t, a.SymmetricKey)
	case a.TPM != nil:
		adminPrintTPMGroup(t, a.TPM)
	case a.X509 != nil && a.X509.CAReferences != nil:
		t.row("caReference:", a.X509.CAReferences.Primary)
	case a.X509 != nil && a.X509.SigningCertificates != nil && a.X509.SigningCertificates.Primary != nil:
		if info := a.X509.SigningCertificates.Primary.Info; info != nil {
			t.row("signingCertificate:", info.SubjectName)
			t.row("sha256Thumbprint:", info.SHA256Thumbprint)
			t.row("notAfter:", adminFmtTime(info.NotAfter))
		}
	}
	t.row("provisioningStatus:", g.ProvisioningStatus)
	t.row("iotHubHostName:", g.IoTHubHostName)
	if len(g.IoTHubs) > 0 {
		t.row("iotHubs:", strings.Join(g.IoTHubs, ","))
	}
	if g.AllocationPolicy != "" {
		t.row("allocationPolicy:", g.AllocationPolicy)
	}
	adminIssuanceRows(t, &g.EnrollmentSettings)
	t.row("etag:", g.ETag)
	t.row("created:", adminFmtTime(g.CreatedAt))
	t.row("lastUpdated:", adminFmtTime(g.UpdatedAt))
	return t.flush()
}

func adminGroupShow(ctx context.Context, c *adminCmd, args []string) error {
	return adminShow(ctx, c, args, "GROUP_ID", (*apiclient.Client).GetGroup, adminGroupKeys, adminPrintGroup)
}

func adminGroupList(ctx context.Context, c *adminCmd, args []string) error {
	pageSize := c.fs.Int("page-size", 1000, "groups fetched per request")
	if _, err := c.parse(args, "list [--json] [--page-size N]", 0, 0); err != nil {
		return err
	}
	cl, err := c.opts.client()
	if err != nil {
		return err
	}
	all := []*store.Group{}
	if err := cl.EachGroup(ctx, *pageSize, func(g *store.Group) error {
		all = append(all, g)
		return nil
	}); err != nil {
		return err
	}
	if c.opts.json {
		return adminPrintJSON(c.stdout, all)
	}
	t := newAdminTable(c.stdout, "GROUP ID", "ATTESTATION", "STATUS", "IOT HUB", "LAST UPDATED")
	for _, g := range all {
		t.row(g.EnrollmentGroupID, g.Attestation.Type, g.ProvisioningStatus, g.IoTHubHostName, adminFmtTime(g.UpdatedAt))
	}
	return t.flush()
}

func adminGroupDelete(ctx context.Context, c *adminCmd, args []string) error {
	return adminDelete(ctx, c, args, "enrollment group", "GROUP_ID", (*apiclient.Client).DeleteGroup)
}
