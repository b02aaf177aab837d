package main

// dpsd registration show|list|delete

import (
	"context"
	"io"
	"strconv"

	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/store"
)

// runRegistrationCmd runs "dpsd registration ..." (device registration
// states) and returns the process exit code: 0 success, 1 failure, 2 usage.
func runRegistrationCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := map[string]func(context.Context, *adminCmd, []string) error{
		"show":   adminRegistrationShow,
		"list":   adminRegistrationList,
		"delete": adminRegistrationDelete,
	}
	return adminDispatch(ctx, "registration", args, stdout, stderr, cmds, []string{"show", "list", "delete"})
}

func adminRegistrationShow(ctx context.Context, c *adminCmd, args []string) error {
	return adminShow(ctx, c, args, "REGISTRATION_ID", (*apiclient.Client).GetRegistration, nil, adminPrintRegistration)
}

// adminPrintRegistration prints a registration as JSON or a field list.
func adminPrintRegistration(c *adminCmd, r *store.Registration) error {
	if c.opts.json {
		return adminPrintJSON(c.stdout, r)
	}
	t := newAdminTable(c.stdout)
	t.row("registrationId:", r.RegistrationID)
	t.row("status:", r.Status)
	t.row("substatus:", r.Substatus)
	t.row("assignedHub:", r.AssignedHub)
	t.row("deviceId:", r.DeviceID)
	t.row("attestation:", r.AttestationType)
	if r.EnrollmentGroupID != "" {
		t.row("enrollmentGroupId:", r.EnrollmentGroupID)
	}
	if r.ErrorCode != 0 {
		t.row("error:", strconv.Itoa(r.ErrorCode)+" "+r.ErrorMessage)
	}
	adminCertificateRows(t, r)
	t.row("etag:", r.ETag)
	t.row("created:", adminFmtTime(r.CreatedAt))
	t.row("lastUpdated:", adminFmtTime(r.UpdatedAt))
	return t.flush()
}

func adminRegistrationList(ctx context.Context, c *adminCmd, args []string) error {
	pageSize := c.fs.Int("page-size", 1000, "registrations fetched per request")
	pos, err := c.parse(args, "list GROUP_ID [--json] [--page-size N]", 1, 1)
	if err != nil {
		return err
	}
	cl, err := c.opts.client()
	if err != nil {
		return err
	}
	all := []*store.Registration{}
	if err := cl.EachRegistration(ctx, pos[0], *pageSize, func(r *store.Registration) error {
		all = append(all, r)
		return nil
	}); err != nil {
		return err
	}
	if c.opts.json {
		return adminPrintJSON(c.stdout, all)
	}
	t := newAdminTable(c.stdout, "REGISTRATION ID", "STATUS", "ASSIGNED HUB", "DEVICE ID", "LAST UPDATED")
	for _, r := range all {
		t.row(r.RegistrationID, r.Status, r.AssignedHub, r.DeviceID, adminFmtTime(r.UpdatedAt))
	}
	return t.flush()
}

func adminRegistrationDelete(ctx context.Context, c *adminCmd, args []string) error {
	return adminDelete(ctx, c, args, "registration", "REGISTRATION_ID", (*apiclient.Client).DeleteRegistration)
}
