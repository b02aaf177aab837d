package main

// dpsd hub add|show|list|remove: linked IoT hubs

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/store"
)

// runHubCmd runs "dpsd hub ..." (linked IoT hubs) and returns the process
// exit code: 0 success, 1 failure, 2 usage.
func runHubCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := map[string]func(context.Context, *adminCmd, []string) error{
		"add":    adminHubAdd,
		"show":   adminHubShow,
		"list":   adminHubList,
		"remove": adminHubRemove,
	}
	return adminDispatch(ctx, "hub", args, stdout, stderr, cmds, []string{"add", "show", "list", "remove"})
}

// adminHubSecretEnv names the variable a hub's connection string may come
// from (a flag's value shows in the process list).
const adminHubSecretEnv = "DPSD_HUB_CONNECTION_STRING"

func adminHubAdd(ctx context.Context, c *adminCmd, args []string) error {
	var cs, csFile, webhookURL, secretFile, x509Identity string
	var weight int
	var noAllocation, replace bool
	fs := c.fs
	fs.StringVar(&cs, "hub-connection-string", "", "the hub's connection string (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...), a policy with RegistryWrite and ServiceConnect: devices are registered in the hub before they are told to use it (visible in the process list: prefer --hub-connection-string-file or $"+adminHubSecretEnv+")")
	fs.StringVar(&csFile, "hub-connection-string-file", "", "read the connection string from this file (- for standard input)")
	fs.StringVar(&webhookURL, "webhook-url", "", "hand devices off to a registry that is not Azure IoT Hub: POST each registration to this https URL, signed (see docs/operations.md)")
	fs.StringVar(&secretFile, "webhook-secret-file", "", "file holding the webhook's signing secret (base64 of at least 32 random bytes)")
	fs.IntVar(&weight, "weight", 0, "allocation weight, 1-1000 (default 1): a hub's share of hashed allocations is its weight over the sum")
	fs.BoolVar(&noAllocation, "no-allocation", false, "keep the hub out of hashed allocation (applyAllocationPolicy false); enrollments may still name it")
	fs.StringVar(&x509Identity, "x509-identity", "", "how X.509 devices, and devices issued an operational certificate, are created in the hub: selfSigned (the certificate's thumbprint, the default) or certificateAuthority (the hub trusts their CA, or dpsd's issuing CA, and checks that the common name is the device id)")
	fs.BoolVar(&replace, "replace", false, "replace a hub already linked instead of failing")
	pos, err := c.parse(args, "add HOST_NAME [--hub-connection-string-file F | --webhook-url U --webhook-secret-file F] [--weight N] [--no-allocation] [flags]", 1, 1)
	if err != nil {
		return err
	}
	h := &store.LinkedHub{Name: pos[0], AllocationWeight: weight, X509Identity: x509Identity}
	switch {
	case csFile != "" && cs != "":
		return fmt.Errorf("give the hub's connection string once: --hub-connection-string or --hub-connection-string-file")
	case csFile != "":
		if cs, err = adminReadSecret(csFile); err != nil {
			return err
		}
	case cs == "":
		cs = os.Getenv(adminHubSecretEnv)
	}
	h.ConnectionString = cs
	if webhookURL != "" || secretFile != "" {
		h.Webhook = &store.HubWebhook{URL: webhookURL}
		if secretFile != "" {
			if h.Webhook.Secret, err = adminReadSecret(secretFile); err != nil {
				return err
			}
		}
	}
	if noAllocation {
		no := false
		h.ApplyAllocationPolicy = &no
	}
	cl, err := c.opts.client()
	if err != nil {
		return err
	}
	if !replace {
		if _, err := cl.GetLinkedHub(ctx, h.Name); err == nil {
			return fmt.Errorf("hub %s is already linked (use --replace to replace it)", h.Name)
		} else if !apiclient.IsStatus(err, 404) {
			return err
		}
	}
	out, err := cl.PutLinkedHub(ctx, h, "")
	if err != nil {
		return err
	}
	return adminPrintHub(c, out)
}

// adminReadSecret reads a one-line secret from a file (- for standard
// input), trimmed.
func adminReadSecret(path string) (string, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return "", err
		}
		defer f.Close()
		r = f
	}
	line, err := bufio.NewReader(io.LimitReader(r, 64<<10)).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	if line = strings.TrimSpace(line); line == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return line, nil
}

func adminHubShow(ctx context.Context, c *adminCmd, args []string) error {
	return adminShow(ctx, c, args, "HOST_NAME", (*apiclient.Client).GetLinkedHub, nil, adminPrintHub)
}

// adminPrintHub prints a linked hub as JSON or a field list.
func adminPrintHub(c *adminCmd, h *store.LinkedHub) error {
	if c.opts.json {
		return adminPrintJSON(c.stdout, h)
	}
	t := newAdminTable(c.stdout)
	t.row("name:", h.Name)
	t.row("handOff:", adminHubHandoff(h))
	if h.ConnectionString != "" {
		t.row("connectionString:", h.ConnectionString+" (key not shown)")
	}
	if h.Webhook != nil {
		t.row("webhookUrl:", h.Webhook.URL)
	}
	t.row("allocationWeight:", strconv.Itoa(h.Weight()))
	t.row("applyAllocationPolicy:", strconv.FormatBool(h.Allocates()))
	if h.X509Identity != "" {
		t.row("x509Identity:", h.X509Identity)
	}
	t.row("etag:", h.ETag)
	t.row("created:", adminFmtTime(h.CreatedAt))
	t.row("lastUpdated:", adminFmtTime(h.UpdatedAt))
	return t.flush()
}

// adminHubHandoff says how devices reach the hub's registry.
func adminHubHandoff(h *store.LinkedHub) string {
	switch {
	case h.ConnectionString != "":
		return "iothub (registry REST API)"
	case h.Webhook != nil:
		return "webhook"
	}
	return "none (allocation only)"
}

func adminHubList(ctx context.Context, c *adminCmd, args []string) error {
	if _, err := c.parse(args, "list [--json]", 0, 0); err != nil {
		return err
	}
	cl, err := c.opts.client()
	if err != nil {
		return err
	}
	hubs, err := cl.ListLinkedHubs(ctx)
	if err != nil {
		return err
	}
	if c.opts.json {
		return adminPrintJSON(c.stdout, hubs)
	}
	t := newAdminTable(c.stdout, "HOST NAME", "HAND-OFF", "WEIGHT", "ALLOCATION", "LAST UPDATED")
	for _, h := range hubs {
		alloc := "yes"
		if !h.Allocates() {
			alloc = "no"
		}
		t.row(h.Name, adminHubHandoff(h), strconv.Itoa(h.Weight()), alloc, adminFmtTime(h.UpdatedAt))
	}
	return t.flush()
}

func adminHubRemove(ctx context.Context, c *adminCmd, args []string) error {
	etag := c.fs.String("etag", "", "remove only if the hub still has this etag")
	pos, err := c.parse(args, "remove HOST_NAME [--etag E]", 1, 1)
	if err != nil {
		return err
	}
	cl, err := c.opts.client()
	if err != nil {
		return err
	}
	if err := cl.DeleteLinkedHub(ctx, pos[0], *etag); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "unlinked hub %s (devices assigned to it keep their assignment until they register again)\n", pos[0])
	return nil
}
