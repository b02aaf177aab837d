package main

// dpsd enrollment import FILE: factory bulk loads through the bulk API.

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/api"
	"github.com/tpmdps/dpsd/apiclient"
	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/store"
)

// Import chunking bounds: one bulk request carries at most 10,000 items.
const (
	adminImportDefaultChunk = 1000
	adminImportMaxChunk     = 10000
	adminImportMaxLine      = 1 << 20
)

// adminImportRow is one parsed input row, or the reason it could not be parsed.
type adminImportRow struct {
	line int
	e    *store.Enrollment
	err  error
}

// adminImportReader yields rows of a JSON-lines or CSV file.
type adminImportReader interface {
	next() (adminImportRow, bool)
}

// adminImportFailure is one failed row, for the report.
type adminImportFailure struct {
	Line           int    `json:"line"`
	RegistrationID string `json:"registrationId,omitempty"`
	Error          string `json:"error"`
}

// adminImportSummary is the outcome of an import.
type adminImportSummary struct {
	Rows     int                  `json:"rows"`
	Created  int                  `json:"created"`
	Updated  int                  `json:"updated"`
	Failed   int                  `json:"failed"`
	Failures []adminImportFailure `json:"failures"`
}

func adminEnrollmentImport(ctx context.Context, c *adminCmd, args []string) error {
	chunk := c.fs.Int("chunk", adminImportDefaultChunk, "enrollments per bulk request (at most 10000)")
	noUpdate := c.fs.Bool("no-update", false, "count rows whose registration id is already enrolled as failed instead of replacing them")
	pos, err := c.parse(args, "import FILE|- [--chunk N] [--no-update] [--json]\n"+
		"  FILE holds JSON lines (one DPS enrollment per line) or CSV with a header naming columns among\n"+
		"  registrationId,attestationType,endorsementKey,storageRootKey,primaryKey,secondaryKey,certificate,\n"+
		"  iotHubHostName,iotHubs,deviceId,provisioningStatus,allocationPolicy,iotEdge,initialTwin", 1, 1)
	if err != nil {
		return err
	}
	if *chunk < 1 || *chunk > adminImportMaxChunk {
		return fmt.Errorf("--chunk must be 1-%d", adminImportMaxChunk)
	}
	var in io.Reader = os.Stdin
	if pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			return fmt.Errorf("opening import file: %w", err)
		}
		defer f.Close()
		in = f
	}
	rd, err := newAdminImportReader(in)
	if err != nil {
		return err
	}
	cl, err := c.opts.client()
	if err != nil {
		return err
	}
	imp := &adminImporter{c: c, cl: cl, noUpdate: *noUpdate, start: time.Now()}
	imp.lastProgress = imp.start
	batch := make([]adminImportRow, 0, *chunk)
	inBatch := make(map[string]bool, *chunk)
	var runErr error
	for runErr == nil {
		row, ok := rd.next()
		if !ok {
			break
		}
		imp.sum.Rows++
		if row.err != nil {
			imp.fail(row.line, "", row.err.Error())
			continue
		}
		id := strings.ToLower(row.e.RegistrationID)
		if inBatch[id] || len(batch) == *chunk {
			runErr = imp.send(ctx, batch)
			batch, inBatch = batch[:0], make(map[string]bool, *chunk)
		}
		batch = append(batch, row)
		inBatch[id] = true
	}
	if runErr == nil && len(batch) > 0 {
		runErr = imp.send(ctx, batch)
	}
	imp.progress(true)
	if c.opts.json {
		if imp.sum.Failures == nil {
			imp.sum.Failures = []adminImportFailure{}
		}
		if err := adminPrintJSON(c.stdout, imp.sum); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(c.stdout, "created %d, updated %d, failed %d\n", imp.sum.Created, imp.sum.Updated, imp.sum.Failed)
	}
	if runErr != nil {
		return fmt.Errorf("import stopped after %d rows: %w", imp.sum.Rows, runErr)
	}
	if imp.sum.Failed > 0 {
		return fmt.Errorf("%d of %d rows failed", imp.sum.Failed, imp.sum.Rows)
	}
	return nil
}

// adminImporter sends chunks and keeps the tally.
type adminImporter struct {
	c            *adminCmd
	cl           *apiclient.Client
	noUpdate     bool
	sum          adminImportSummary
	start        time.Time
	lastProgress time.Time
}

// fail records and reports a failed row.
func (im *adminImporter) fail(line int, id, msg string) {
	im.sum.Failed++
	im.sum.Failures = append(im.sum.Failures, adminImportFailure{Line: line, RegistrationID: id, Error: msg})
	if id != "" {
		fmt.Fprintf(im.c.stderr, "line %d: %s: %s\n", line, id, msg)
	} else {
		fmt.Fprintf(im.c.stderr, "line %d: %s\n", line, msg)
	}
}

// progress prints a progress line on stderr at most once a second (always when final).
func (im *adminImporter) progress(final bool) {
	now := time.Now()
	if !final && now.Sub(im.lastProgress) < time.Second {
		return
	}
	im.lastProgress = now
	rate := float64(im.sum.Rows) / max(now.Sub(im.start).Seconds(), 1e-3)
	fmt.Fprintf(im.c.stderr, "import: %d rows: %d created, %d updated, %d failed (%.0f rows/s)\n",
		im.sum.Rows, im.sum.Created, im.sum.Updated, im.sum.Failed, rate)
}

// send creates a chunk of rows (unique ids); rows already enrolled are then
// replaced in a second bulk request unless noUpdate. Only a failure of a
// whole request is returned; item failures are tallied.
func (im *adminImporter) send(ctx context.Context, rows []adminImportRow) error {
	if len(rows) == 0 {
		return nil
	}
	byID := make(map[string]adminImportRow, len(rows))
	es := make([]*store.Enrollment, len(rows))
	for i, r := range rows {
		byID[strings.ToLower(r.e.RegistrationID)] = r
		es[i] = r.e
	}
	res, err := im.cl.BulkEnrollments(ctx, apiclient.BulkCreate, es)
	if err != nil {
		return err
	}
	var conflicts []*store.Enrollment
	failedHere := 0
	for _, be := range res.Errors {
		r := byID[strings.ToLower(be.RegistrationID)]
		if be.ErrorCode/1000 == 409 && !im.noUpdate && r.e != nil {
			conflicts = append(conflicts, r.e)
			continue
		}
		failedHere++
		im.fail(r.line, be.RegistrationID, fmt.Sprintf("%s (%d)", be.ErrorStatus, be.ErrorCode))
	}
	im.sum.Created += len(rows) - len(conflicts) - failedHere
	if len(conflicts) > 0 {
		res, err := im.cl.BulkEnrollments(ctx, apiclient.BulkUpdate, conflicts)
		if err != nil {
			return err
		}
		for _, be := range res.Errors {
			r := byID[strings.ToLower(be.RegistrationID)]
			im.fail(r.line, be.RegistrationID, fmt.Sprintf("%s (%d)", be.ErrorStatus, be.ErrorCode))
		}
		im.sum.Updated += len(conflicts) - len(res.Errors)
	}
	im.progress(false)
	return nil
}

// newAdminImportReader detects the format: JSON lines when the first non-blank
// character is '{', CSV with a header otherwise. A UTF-8 BOM is dropped.
func newAdminImportReader(r io.Reader) (adminImportReader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	if bom, _ := br.Peek(3); string(bom) == "\xEF\xBB\xBF" {
		_, _ = br.Discard(3)
	}
	head, err := br.Peek(4096)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return nil, fmt.Errorf("reading import file: %w", err)
	}
	t := strings.TrimLeft(string(head), " \t\r\n")
	switch {
	case t == "":
		return nil, fmt.Errorf("import file is empty")
	case t[0] == '{':
		return &adminJSONLinesReader{br: br}, nil
	}
	return newAdminCSVReader(br)
}

// adminJSONLinesReader reads one enrollment (DPS JSON) per line; blank lines and
// lines starting with '#' are skipped.
type adminJSONLinesReader struct {
	br   *bufio.Reader
	line int
	done bool
}

func (j *adminJSONLinesReader) next() (adminImportRow, bool) {
	for !j.done {
		text, err := j.br.ReadSlice('\n')
		long := errors.Is(err, bufio.ErrBufferFull)
		var buf []byte
		buf = append(buf, text...)
		for errors.Is(err, bufio.ErrBufferFull) {
			text, err = j.br.ReadSlice('\n')
			if len(buf) <= adminImportMaxLine {
				buf = append(buf, text...)
			}
		}
		if err != nil {
			j.done = true
			if !errors.Is(err, io.EOF) {
				j.line++
				return adminImportRow{line: j.line, err: fmt.Errorf("reading: %w", err)}, true
			}
		}
		j.line++
		t := strings.TrimSpace(string(buf))
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if long && len(buf) > adminImportMaxLine {
			return adminImportRow{line: j.line, err: fmt.Errorf("line longer than %d bytes", adminImportMaxLine)}, true
		}
		e, err := api.DecodeEnrollment([]byte(t))
		if err != nil {
			return adminImportRow{line: j.line, err: err}, true
		}
		return adminImportRow{line: j.line, e: e, err: adminCheckImportRow(e)}, true
	}
	return adminImportRow{}, false
}

// adminCSVReader reads CSV rows under a header of DPS field names.
type adminCSVReader struct {
	r    *csv.Reader
	cols map[string]int
	done bool
}

// adminCSVColumns are the accepted header names (compared case-insensitively).
func adminCSVColumns() []string {
	return []string{"registrationid", "attestationtype", "endorsementkey", "storagerootkey", "primarykey",
		"secondarykey", "certificate", "iothubhostname", "iothubs", "deviceid", "provisioningstatus",
		"allocationpolicy", "iotedge", "initialtwin"}
}

func newAdminCSVReader(r io.Reader) (*adminCSVReader, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("reading the CSV header: %w", err)
	}
	known := make(map[string]bool)
	for _, k := range adminCSVColumns() {
		known[k] = true
	}
	cols := make(map[string]int, len(header))
	for i, h := range header {
		k := strings.ToLower(strings.TrimSpace(h))
		if !known[k] {
			return nil, fmt.Errorf("CSV header: unknown column %q (known: %s)", h, strings.Join(adminCSVColumns(), ","))
		}
		if _, dup := cols[k]; dup {
			return nil, fmt.Errorf("CSV header: column %q appears twice", h)
		}
		cols[k] = i
	}
	if _, ok := cols["registrationid"]; !ok {
		return nil, fmt.Errorf("CSV header: a registrationId column is required")
	}
	return &adminCSVReader{r: cr, cols: cols}, nil
}

func (c *adminCSVReader) next() (adminImportRow, bool) {
	for !c.done {
		rec, err := c.r.Read()
		if errors.Is(err, io.EOF) {
			c.done = true
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return adminImportRow{line: pe.StartLine, err: fmt.Errorf("bad CSV: %w", pe.Err)}, true
			}
			c.done = true
			return adminImportRow{err: fmt.Errorf("reading CSV: %w", err)}, true
		}
		line, _ := c.r.FieldPos(0)
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue
		}
		if len(rec) != len(c.cols) {
			return adminImportRow{line: line, err: fmt.Errorf("%d fields, the header has %d", len(rec), len(c.cols))}, true
		}
		e, err := c.enrollment(rec)
		return adminImportRow{line: line, e: e, err: err}, true
	}
	return adminImportRow{}, false
}

// enrollment builds an enrollment from a CSV record.
func (c *adminCSVReader) enrollment(rec []string) (*store.Enrollment, error) {
	get := func(k string) string {
		if i, ok := c.cols[k]; ok {
			return strings.TrimSpace(rec[i])
		}
		return ""
	}
	e := &store.Enrollment{
		RegistrationID: get("registrationid"),
		DeviceID:       get("deviceid"),
		EnrollmentSettings: store.EnrollmentSettings{
			IoTHubHostName:     get("iothubhostname"),
			ProvisioningStatus: get("provisioningstatus"),
			AllocationPolicy:   get("allocationpolicy"),
		},
	}
	if hubs := get("iothubs"); hubs != "" {
		e.IoTHubs = strings.FieldsFunc(hubs, func(r rune) bool { return r == '|' || r == ' ' || r == ';' })
	}
	if v := get("iotedge"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("iotEdge %q is not true or false", v)
		}
		e.Capabilities = &store.Capabilities{IoTEdge: b}
	}
	if v := get("initialtwin"); v != "" {
		if !json.Valid([]byte(v)) {
			return nil, fmt.Errorf("initialTwin is not valid JSON")
		}
		e.InitialTwin = json.RawMessage(v)
	}
	typ := get("attestationtype")
	if typ == "" {
		switch {
		case get("endorsementkey") != "":
			typ = store.AttestationTPM
		case get("certificate") != "":
			typ = store.AttestationX509
		default:
			typ = store.AttestationSymmetricKey
		}
	}
	switch strings.ToLower(typ) {
	case "tpm":
		e.Attestation = store.Attestation{Type: store.AttestationTPM, TPM: &store.TPMAttestation{
			EndorsementKey: get("endorsementkey"), StorageRootKey: get("storagerootkey")}}
	case "symmetrickey":
		e.Attestation = store.Attestation{Type: store.AttestationSymmetricKey, SymmetricKey: &store.SymmetricKeyAttestation{
			PrimaryKey: get("primarykey"), SecondaryKey: get("secondarykey")}}
	case "x509":
		e.Attestation = store.Attestation{Type: store.AttestationX509, X509: &store.X509Attestation{
			ClientCertificates: &store.X509Certificates{Primary: &store.X509CertificateWithInfo{Certificate: get("certificate")}}}}
	default:
		return nil, fmt.Errorf("attestationType %q is not tpm, symmetricKey or x509", typ)
	}
	return e, adminCheckImportRow(e)
}

// adminCheckImportRow catches the mistakes worth reporting before a request: the
// service validates everything else and its per-item errors carry the line too.
func adminCheckImportRow(e *store.Enrollment) error {
	if e.RegistrationID == "" {
		return fmt.Errorf("registrationId is missing")
	}
	if err := attest.ValidateRegistrationID(e.RegistrationID); err != nil {
		return fmt.Errorf("registrationId %q: %w", e.RegistrationID, err)
	}
	a := e.Attestation
	if a.TPM != nil {
		if a.TPM.EndorsementKey == "" {
			return fmt.Errorf("endorsementKey is missing")
		}
		if _, err := base64.StdEncoding.DecodeString(a.TPM.EndorsementKey); err != nil {
			return fmt.Errorf("endorsementKey is not base64")
		}
	}
	if a.SymmetricKey != nil {
		for _, k := range []string{a.SymmetricKey.PrimaryKey, a.SymmetricKey.SecondaryKey} {
			if _, err := attest.DecodeSymmetricKey(k); k != "" && err != nil {
				return fmt.Errorf("symmetric key: %w", err) // the reason, never the key
			}
		}
	}
	return nil
}
