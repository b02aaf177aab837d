package version

import (
	"runtime"
	"strings"
	"testing"
)

// TestString names the command and the Go version that built it.
func TestString(t *testing.T) {
	s := String("dps-device")
	if !strings.HasPrefix(s, "dps-device ") || !strings.HasSuffix(s, runtime.Version()) {
		t.Fatalf("version %q", s)
	}
}
