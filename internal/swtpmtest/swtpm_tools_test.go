package swtpmtest_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/internal/swtpmtest"
)

// recordingTB records Fatalf instead of stopping the test.
type recordingTB struct {
	testing.TB
	fatal string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Fatalf(format string, args ...any) { r.fatal = fmt.Sprintf(format, args...) }

func TestMissingToolsFailLoudly(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no swtpm, no tpm2-tools
	r := &recordingTB{TB: t}
	swtpmtest.CheckTools(r)
	for _, want := range []string{"NOT INSTALLED", "swtpm", "tpm2_createek", "apt-get install", "tpm2-tools", "libtss2-tcti-swtpm0", "do not skip"} {
		if !strings.Contains(r.fatal, want) {
			t.Errorf("failure message lacks %q:\n%s", want, r.fatal)
		}
	}
}

func TestInstalledToolsPass(t *testing.T) {
	r := &recordingTB{TB: t}
	swtpmtest.CheckTools(r)
	if r.fatal != "" {
		t.Fatalf("CheckTools failed on this machine: %s", r.fatal)
	}
}
