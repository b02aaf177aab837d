package api

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/attest"
)

func TestAuthorization(t *testing.T) {
	env := newTestEnv(t)
	now := time.Now()
	wrongKey := randomBytes(t, 32)
	cases := []struct {
		name   string
		method string
		token  string
		status int
		code   int
	}{
		{"no token", http.MethodGet, "-", 401, codeUnauthorized},
		{"not a SAS token", http.MethodGet, "Bearer abc", 401, codeUnauthorized},
		{"bad signature", http.MethodGet, attest.SignSAS(wrongKey, testHost, now.Add(time.Hour), ownerName), 401, codeUnauthorized},
		{"expired", http.MethodGet, attest.SignSAS(env.ownerKey, testHost, now.Add(-time.Hour), ownerName), 401, codeUnauthorized},
		{"too long-lived", http.MethodGet, attest.SignSAS(env.ownerKey, testHost, now.Add(90*24*time.Hour), ownerName), 401, codeUnauthorized},
		{"unknown policy", http.MethodGet, attest.SignSAS(env.ownerKey, testHost, now.Add(time.Hour), "nosuchpolicy"), 401, codeUnauthorized},
		{"no policy name", http.MethodGet, attest.SignSAS(env.ownerKey, testHost, now.Add(time.Hour), ""), 401, codeUnauthorized},
		{"other host", http.MethodGet, attest.SignSAS(env.ownerKey, "other.example", now.Add(time.Hour), ownerName), 401, codeUnauthorized},
		{"reader key with owner name", http.MethodGet, attest.SignSAS(env.readerKey, testHost, now.Add(time.Hour), ownerName), 401, codeUnauthorized},
		{"read-only policy writes", http.MethodPut, attest.SignSAS(env.readerKey, testHost, now.Add(time.Hour), readerName), 403, codeForbidden},
		{"read-only policy deletes", http.MethodDelete, attest.SignSAS(env.readerKey, testHost, now.Add(time.Hour), readerName), 403, codeForbidden},
		// Passing authorization: the enrollment does not exist.
		{"read-only policy reads", http.MethodGet, attest.SignSAS(env.readerKey, testHost, now.Add(time.Hour), readerName), 404, codeEnrollmentNotFound},
		{"owner, host in upper case", http.MethodGet, attest.SignSAS(env.ownerKey, strings.ToUpper(testHost), now.Add(time.Hour), ownerName), 404, codeEnrollmentNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var body any
			if tc.method == http.MethodPut {
				body = symEnrollment("dev-1")
			}
			r := env.request(tc.method, "/enrollments/dev-1", body, map[string]string{"Authorization": tc.token})
			r.expectError(t, tc.status, tc.code)
		})
	}
	// The refused write did not happen.
	r := env.request(http.MethodGet, "/enrollments/dev-1", nil, nil)
	r.expectError(t, 404, codeEnrollmentNotFound)
	// Tokens never reach the logs.
	if strings.Contains(env.logs.String(), "sig=") {
		t.Fatalf("a token was logged: %s", env.logs.String())
	}
}

func TestAPIVersion(t *testing.T) {
	env := newTestEnv(t)
	for _, v := range []string{APIVersion20211001, APIVersion20190331, APIVersion20180401} {
		r := env.request(http.MethodGet, "/enrollments/dev-1?api-version="+v, nil, nil)
		r.expectError(t, 404, codeEnrollmentNotFound)
	}
	for _, q := range []string{"", "?api-version=", "?api-version=2021-11-01-preview", "?api-version=2017-11-15"} {
		r := env.request(http.MethodGet, "/enrollments/dev-1?x=1"+strings.Replace(q, "?", "&", 1), nil, nil)
		r.expectError(t, 400, codeBadAPIVersion)
	}
}

func TestRoutes(t *testing.T) {
	env := newTestEnv(t)
	env.request(http.MethodGet, "/nothing/here", nil, nil).expectError(t, 404, codeNoRoute)
	env.request(http.MethodGet, "/enrollments", nil, nil).expectError(t, 405, codeMethodNotAllowed)
	env.request(http.MethodPost, "/registrations/dev-1", nil, nil).expectError(t, 405, codeMethodNotAllowed)
	env.request(http.MethodGet, "/registrations/g/query", nil, nil).expectError(t, 405, codeMethodNotAllowed)
	// An unauthenticated caller learns nothing beyond a 401 on a real route.
	env.request(http.MethodGet, "/enrollments/x", nil, map[string]string{"Authorization": "-"}).expectError(t, 401, codeUnauthorized)
}

func TestParseRights(t *testing.T) {
	for in, want := range map[string]Rights{"read": RightRead, "Write": RightWrite, "read, write": RightAll, "all": RightAll,
		"EnrollmentRead,RegistrationStatusRead": RightRead, "ServiceConfig,EnrollmentWrite,EnrollmentRead": RightAll} {
		got, err := ParseRights(in)
		if err != nil || got != want {
			t.Errorf("ParseRights(%q) = %v, %v; want %v", in, got, err, want)
		}
		if back, err := ParseRights(got.String()); err != nil || back != got {
			t.Errorf("round trip of %v: %v %v", got, back, err)
		}
	}
	for _, bad := range []string{"", "admin", "read,root", " , "} {
		if _, err := ParseRights(bad); err == nil {
			t.Errorf("ParseRights(%q) accepted", bad)
		}
	}
}

func TestNewConfigErrors(t *testing.T) {
	env := newTestEnv(t)
	key := randomBytes(t, 32)
	for name, cfg := range map[string]Config{
		"no store":      {HostName: "h", Policies: []Policy{{Name: "p", Key: key, Rights: RightAll}}},
		"no host":       {Store: env.st, Policies: []Policy{{Name: "p", Key: key, Rights: RightAll}}},
		"no policy":     {Store: env.st, HostName: "h"},
		"short key":     {Store: env.st, HostName: "h", Policies: []Policy{{Name: "p", Key: key[:8], Rights: RightAll}}},
		"no rights":     {Store: env.st, HostName: "h", Policies: []Policy{{Name: "p", Key: key}}},
		"unnamed":       {Store: env.st, HostName: "h", Policies: []Policy{{Key: key, Rights: RightAll}}},
		"duplicate pol": {Store: env.st, HostName: "h", Policies: []Policy{{Name: "p", Key: key, Rights: RightAll}, {Name: "P", Key: key, Rights: RightRead}}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
