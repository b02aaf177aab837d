package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/tpmdps/dpsd/store"
)

// Paths of the health endpoints. They are unauthenticated: they say only
// whether the process is up and ready, never what it holds.
const (
	// HealthPath answers 200 while the process serves HTTP (liveness).
	HealthPath = "/healthz"
	// ReadyPath answers 200 when every readiness check passes, else 503.
	ReadyPath = "/readyz"
)

// Check is one readiness condition. Fn returns nil when it is met; its error
// text is shown to the caller, so it must not contain secrets.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// Healthz returns the liveness handler: 200 "ok" to GET and HEAD.
func Healthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte("ok\n"))
	})
}

// ReadyStatus is the JSON body of a readiness answer.
type ReadyStatus struct {
	// Status is "ready" or "not ready".
	Status string `json:"status"`
	// Checks maps each check's name to "ok" or its error text.
	Checks map[string]string `json:"checks"`
}

// Readyz returns the readiness handler: it runs every check concurrently,
// each bounded by timeout, and answers 200 when all pass, else 503; the
// body is a ReadyStatus.
func Readyz(timeout time.Duration, checks ...Check) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		st := ReadyStatus{Status: "ready", Checks: make(map[string]string, len(checks))}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, c := range checks {
			wg.Go(func() {
				err := c.Fn(ctx)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					st.Checks[c.Name] = err.Error()
					st.Status = "not ready"
				} else {
					st.Checks[c.Name] = "ok"
				}
			})
		}
		wg.Wait()
		code := http.StatusOK
		if st.Status != "ready" {
			code = http.StatusServiceUnavailable
		}
		b, _ := json.Marshal(st)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		_, _ = w.Write(append(b, '\n'))
	})
}

// StoreCheck is a readiness check that st answers a read (a lookup of an
// enrollment that need not exist).
func StoreCheck(st store.Store) Check {
	return Check{Name: "store", Fn: func(ctx context.Context) error {
		_, err := st.GetEnrollment(ctx, "readyz-probe")
		if err == nil || errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	}}
}
