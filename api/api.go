package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/tpmdps/dpsd/attest"
	"github.com/tpmdps/dpsd/internal/jsonlimit"
	"github.com/tpmdps/dpsd/internal/trackid"
	"github.com/tpmdps/dpsd/store"
)

// API versions the service accepts in ?api-version= (2021-10-01 and older).
const (
	// APIVersion20211001 is the newest version, sent by current SDKs and az.
	APIVersion20211001 = "2021-10-01"
	// APIVersion20190331 is sent by older service SDKs.
	APIVersion20190331 = "2019-03-31"
	// APIVersion20180401 is the oldest version accepted.
	APIVersion20180401 = "2018-04-01"
)

// Limits applied when Config leaves them zero.
const (
	// DefaultMaxBodyBytes bounds a single-record request body.
	DefaultMaxBodyBytes = 1 << 20
	// DefaultMaxBulkBytes bounds a bulk request body.
	DefaultMaxBulkBytes = 32 << 20
	// MaxBulkItems is the most records one bulk request may carry (as in DPS).
	MaxBulkItems = 10000
	// MaxPageItems caps x-ms-max-item-count; larger requests get pages this big.
	MaxPageItems = 1000
	// MaxJSONDepth bounds the nesting of request JSON (initialTwin included).
	MaxJSONDepth = 32
	// DefaultMaxTokenLifetime bounds how far ahead a service SAS token may expire.
	DefaultMaxTokenLifetime = attest.DefaultSASMaxLifetime
	// DefaultClockSkew is the allowance for clocks of operators' machines.
	DefaultClockSkew = attest.DefaultSASClockSkew
	// DefaultBackupIdleTimeout bounds how long a backup client may stop reading.
	DefaultBackupIdleTimeout = time.Minute
	// timeoutAnswerWindow is the time a 408 answer has to be written.
	timeoutAnswerWindow = 10 * time.Second
)

// Config configures the service API handler.
type Config struct {
	// Store holds enrollments, groups and registrations. Required.
	Store store.Store
	// HostName is the `sr` expected in service SAS tokens (compared
	// case-insensitively), e.g. "dps.example.com". Required.
	HostName string
	// Policies are the shared access policies whose keys may sign tokens. At least one.
	Policies []Policy
	// Logger receives request and audit logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// MaxTokenLifetime bounds token expiry in the future; 0 means DefaultMaxTokenLifetime.
	MaxTokenLifetime time.Duration
	// MaxBodyBytes bounds single-record bodies; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxBulkBytes bounds bulk bodies; 0 means DefaultMaxBulkBytes.
	MaxBulkBytes int64
	// BulkWorkers is how many bulk items are written concurrently (so that the
	// store can coalesce their commits into one fsync); 0 means 64.
	BulkWorkers int
	// BackupDir is where NewBackup copies the store before sending it (the
	// data directory, so that the copy has the store's protection and disk);
	// "" means os.TempDir().
	BackupDir string
	// BackupIdleTimeout is how long a backup client may stop reading before
	// its transfer is aborted; 0 means DefaultBackupIdleTimeout.
	BackupIdleTimeout time.Duration
}

// handler is the http.Handler returned by New. Immutable after New.
type handler struct {
	cfg         Config
	store       store.Store
	enrollments *kind[*store.Enrollment]
	groups      *kind[*store.Group]
	log         *slog.Logger
	now         func() time.Time
	policies    []Policy
}

// request carries what a handler needs to know about the request being served.
type request struct {
	trackingID string
	method     string
	path       string
	policy     string
}

// New validates cfg and returns the service API as an http.Handler.
func New(cfg Config) (http.Handler, error) {
	if cfg.Store == nil {
		return nil, errors.New("api: Config.Store is required")
	}
	if strings.TrimSpace(cfg.HostName) == "" {
		return nil, errors.New("api: Config.HostName is required")
	}
	if len(cfg.Policies) == 0 {
		return nil, errors.New("api: at least one access policy is required")
	}
	seen := make(map[string]bool, len(cfg.Policies))
	pols := make([]Policy, 0, len(cfg.Policies))
	for i, p := range cfg.Policies {
		if p.Name == "" {
			return nil, fmt.Errorf("api: policy %d has no name", i)
		}
		if len(p.Key) < 16 {
			return nil, fmt.Errorf("api: policy %q: key shorter than 16 bytes", p.Name)
		}
		if p.Rights&RightAll == 0 {
			return nil, fmt.Errorf("api: policy %q grants no rights", p.Name)
		}
		ln := strings.ToLower(p.Name)
		if seen[ln] {
			return nil, fmt.Errorf("api: duplicate policy %q", p.Name)
		}
		seen[ln] = true
		p.Key = append([]byte(nil), p.Key...)
		pols = append(pols, p)
	}
	h := &handler{cfg: cfg, store: cfg.Store, log: cfg.Logger, now: cfg.Now, policies: pols}
	h.enrollments, h.groups = enrollmentKind(h), groupKind(cfg.Store)
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.cfg.MaxTokenLifetime <= 0 {
		h.cfg.MaxTokenLifetime = DefaultMaxTokenLifetime
	}
	if h.cfg.MaxBodyBytes <= 0 {
		h.cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if h.cfg.MaxBulkBytes <= 0 {
		h.cfg.MaxBulkBytes = DefaultMaxBulkBytes
	}
	if h.cfg.BulkWorkers <= 0 {
		h.cfg.BulkWorkers = 64
	}
	if h.cfg.BackupIdleTimeout <= 0 {
		h.cfg.BackupIdleTimeout = DefaultBackupIdleTimeout
	}
	return h, nil
}

// ServeHTTP authenticates, checks the api-version and routes the request.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rq := &request{trackingID: trackid.New(), method: r.Method, path: r.URL.Path}
	w.Header().Set("x-ms-request-id", rq.trackingID)

	route, err := parseRoute(r)
	if err != nil {
		h.refuse(w, r, rq, err)
		return
	}
	need := RightRead
	if route.write {
		need = RightWrite
	}
	if !h.admit(w, r, rq, need) {
		return
	}
	route.serve(h, w, r, rq)
}

// admit authorizes r for the rights need, noting the policy in rq, and
// checks its api-version. It answers the error itself and returns false
// when the request may not go on.
func (h *handler) admit(w http.ResponseWriter, r *http.Request, rq *request, need Rights) bool {
	pol, err := h.authorize(r, need)
	if err != nil {
		h.refuse(w, r, rq, err)
		return false
	}
	rq.policy = pol
	if err := checkAPIVersion(r); err != nil {
		h.refuse(w, r, rq, err)
		return false
	}
	return true
}

// refuse answers err for a request whose body was never read. Over
// HTTP/1.x net/http would read (up to 256 KiB of) the body before sending
// the answer and again before reusing the connection, at the pace of a
// client that may never send it. A request with a body is therefore
// answered with "Connection: close" and its read deadline is moved to now:
// the client gets its answer at once and the connection is closed after it.
func (h *handler) refuse(w http.ResponseWriter, r *http.Request, rq *request, err error) {
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
	}
	h.writeError(w, rq, err)
}

// checkAPIVersion requires a well-formed query string with a supported
// ?api-version=.
func checkAPIVersion(r *http.Request) error {
	q, err := parseQuery(r.URL.RawQuery)
	if err != nil {
		return err
	}
	v := q.Get("api-version")
	switch v {
	case APIVersion20211001, APIVersion20190331, APIVersion20180401:
		return nil
	case "":
		return errorf(codeBadAPIVersion, "the api-version query parameter is required")
	default:
		return errorf(codeBadAPIVersion, "unsupported api-version %q (supported: %s, %s, %s)",
			v, APIVersion20211001, APIVersion20190331, APIVersion20180401)
	}
}

// route is a matched endpoint.
type route struct {
	write bool
	serve func(h *handler, w http.ResponseWriter, r *http.Request, rq *request)
}

// parseRoute matches the path and method. It never touches the store, so an
// unauthenticated caller learns only which paths exist.
func parseRoute(r *http.Request) (route, error) {
	raw := strings.Trim(r.URL.EscapedPath(), "/")
	parts := strings.Split(raw, "/")
	for i, p := range parts {
		u, err := unescapeSegment(p)
		if err != nil {
			return route{}, errorf(codeBadRequest, "malformed path")
		}
		parts[i] = u
	}
	m := r.Method
	notAllowed := errorf(codeMethodNotAllowed, "method %s not allowed on %s", m, r.URL.Path)
	collection := func(write bool, fn func(h *handler, w http.ResponseWriter, r *http.Request, rq *request)) (route, error) {
		return route{write: write, serve: fn}, nil
	}
	if len(parts) == 0 || len(parts) > 3 {
		return route{}, errorf(codeNoRoute, "no such resource: %s", r.URL.Path)
	}
	kind := parts[0]
	switch {
	case strings.EqualFold(kind, "enrollments") || strings.EqualFold(kind, "enrollmentGroups"):
		group := strings.EqualFold(kind, "enrollmentGroups")
		switch {
		case len(parts) == 1:
			if m != http.MethodPost {
				return route{}, notAllowed
			}
			return collection(true, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
				if group {
					h.bulkGroups(w, r, rq)
				} else {
					h.bulkEnrollments(w, r, rq)
				}
			})
		case len(parts) == 2 && parts[1] == "query" && m == http.MethodPost:
			return collection(false, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
				if group {
					h.queryGroups(w, r, rq)
				} else {
					h.queryEnrollments(w, r, rq)
				}
			})
		case len(parts) == 3 && strings.EqualFold(parts[2], "attestationmechanism"):
			// Answers the keys: the write right, as the cloud's
			// attestationmechanism/details action is not part of reading.
			if m != http.MethodPost {
				return route{}, notAllowed
			}
			id := parts[1]
			return collection(true, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
				if group {
					h.groupAttestation(w, r, rq, id)
				} else {
					h.enrollmentAttestation(w, r, rq, id)
				}
			})
		case len(parts) == 2:
			id := parts[1]
			switch m {
			case http.MethodGet:
				return collection(false, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
					if group {
						h.getGroup(w, r, rq, id)
					} else {
						h.getEnrollment(w, r, rq, id)
					}
				})
			case http.MethodPut:
				return collection(true, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
					if group {
						h.putGroup(w, r, rq, id)
					} else {
						h.putEnrollment(w, r, rq, id)
					}
				})
			case http.MethodDelete:
				return collection(true, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
					if group {
						h.deleteGroup(w, r, rq, id)
					} else {
						h.deleteEnrollment(w, r, rq, id)
					}
				})
			}
			return route{}, notAllowed
		}
	case strings.EqualFold(kind, "linkedHubs"):
		switch {
		case len(parts) == 1:
			if m != http.MethodGet {
				return route{}, notAllowed
			}
			return collection(false, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
				h.listLinkedHubs(w, r, rq)
			})
		case len(parts) == 2:
			name := parts[1]
			switch m {
			case http.MethodGet:
				return collection(false, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
					h.getLinkedHub(w, r, rq, name)
				})
			case http.MethodPut:
				return collection(true, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
					h.putLinkedHub(w, r, rq, name)
				})
			case http.MethodDelete:
				return collection(true, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
					h.deleteLinkedHub(w, r, rq, name)
				})
			}
			return route{}, notAllowed
		}
	case strings.EqualFold(kind, "registrations"):
		switch {
		case len(parts) == 3 && parts[2] == "query":
			if m != http.MethodPost {
				return route{}, notAllowed
			}
			gid := parts[1]
			return collection(false, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
				h.queryRegistrations(w, r, rq, gid)
			})
		case len(parts) == 2:
			id := parts[1]
			switch m {
			case http.MethodGet:
				return collection(false, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
					h.getRegistration(w, r, rq, id)
				})
			case http.MethodDelete:
				return collection(true, func(h *handler, w http.ResponseWriter, r *http.Request, rq *request) {
					h.deleteRegistration(w, r, rq, id)
				})
			}
			return route{}, notAllowed
		}
	}
	return route{}, errorf(codeNoRoute, "no such resource: %s", r.URL.Path)
}

// unescapeSegment decodes one path segment; an encoded "/" stays inside the segment.
func unescapeSegment(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(s) {
			return "", errors.New("truncated escape")
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape: %w", err)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

// readBody reads at most limit bytes of the request body and checks its JSON nesting.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errorf(codeTooLarge, "request body larger than %d bytes", limit)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The server's read timeout: the connection is closed after the
			// answer. The server's write timeout runs from the same headers
			// and may be as good as over: give the answer time of its own.
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(timeoutAnswerWindow))
			return nil, &apiError{code: codeRequestTimeout, msg: "the request body did not arrive in time", err: err}
		}
		return nil, &apiError{code: codeBadRequest, msg: "reading request body", err: err}
	}
	if err := jsonlimit.CheckDepth(body, MaxJSONDepth); err != nil {
		return nil, &apiError{code: codeMalformedJSON, msg: err.Error()}
	}
	return body, nil
}

// pageQuery reads the paging headers x-ms-max-item-count and x-ms-continuation.
func pageQuery(r *http.Request) (store.Query, error) {
	q := store.Query{Continuation: r.Header.Get("x-ms-continuation")}
	if s := r.Header.Get("x-ms-max-item-count"); s != "" {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return q, invalid("x-ms-max-item-count must be a positive integer")
		}
		q.MaxItems = min(n, MaxPageItems)
	}
	return q, nil
}

// checkQuerySpec accepts the query bodies DPS clients send for "everything".
func checkQuerySpec(body []byte) error {
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	var spec struct {
		Query string `json:"query"`
	}
	if err := json.Unmarshal(body, &spec); err != nil {
		return jsonError("query specification", err)
	}
	q := strings.Join(strings.Fields(strings.ToLower(spec.Query)), " ")
	switch q {
	case "", "*", "select *", "select * from enrollments", "select * from enrollmentgroups":
		return nil
	}
	return errorf(codeBadQuery, "unsupported query %q: only \"*\" is supported", spec.Query)
}

// writePage answers a query with one page and its continuation header.
func writePage[T any](h *handler, w http.ResponseWriter, itemType string, p store.Page[T]) {
	if p.Continuation != "" {
		w.Header().Set("x-ms-continuation", p.Continuation)
	}
	w.Header().Set("x-ms-item-type", itemType)
	items := p.Items
	if items == nil {
		items = []T{}
	}
	h.writeJSON(w, http.StatusOK, items)
}

// ifMatch reads the If-Match header, quoted or not ("*" means any).
func ifMatch(r *http.Request) string {
	v := strings.TrimSpace(r.Header.Get("If-Match"))
	v = strings.TrimPrefix(v, "W/")
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	return v
}

// setETag sets the ETag response header (quoted).
func setETag(w http.ResponseWriter, etag string) {
	if etag != "" {
		w.Header().Set("ETag", `"`+etag+`"`)
	}
}

// audit records who changed what. It never includes keys or tokens.
func (h *handler) audit(rq *request, action, kind, id, etag string) {
	h.log.Info("service api change", slog.Group("audit",
		slog.String("who", rq.policy),
		slog.String("action", action),
		slog.String("kind", kind),
		slog.String("id", id),
		slog.String("etag", etag),
		slog.Time("at", h.now().UTC()),
		slog.String("trackingId", rq.trackingID),
	))
}
