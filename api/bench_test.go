package api

import (
	"fmt"
	"net/http"
	"testing"
)

// BenchmarkBulkCreate measures bulk creation over HTTPS into a bbolt file:
// one op is a 1,000-enrollment bulk request (report enrollments/s).
func BenchmarkBulkCreate(b *testing.B) {
	env := newBenchEnv(b)
	n := 0
	for b.Loop() {
		items := make([]map[string]any, 0, 1000)
		for range 1000 {
			items = append(items, symEnrollment(fmt.Sprintf("bench-%07d", n)))
			n++
		}
		r := env.request(http.MethodPost, "/enrollments", map[string]any{"mode": "create", "enrollments": items}, nil)
		if r.status != 200 {
			b.Fatalf("status %d %s", r.status, r.body)
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "enrollments/s")
}
