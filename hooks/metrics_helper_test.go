package hooks_test

import (
	"testing"

	"github.com/tpmdps/dpsd/internal/metrics"
)

// metricValue returns the value of the counter or gauge name whose labels
// include want (0 when there is none), read from the real metrics registry.
func metricValue(t *testing.T, m *metrics.Metrics, name string, want map[string]string) float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, mt := range f.GetMetric() {
			have := map[string]string{}
			for _, lp := range mt.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			if c := mt.GetCounter(); c != nil {
				sum += c.GetValue()
			} else if g := mt.GetGauge(); g != nil {
				sum += g.GetValue()
			}
		}
	}
	return sum
}
