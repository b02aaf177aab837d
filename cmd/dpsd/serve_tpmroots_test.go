package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/internal/testkit/ekca"
)

// TestServeTPMRoots: serve reads the tpm-roots directory at start and says
// what it holds; a directory it cannot use stops the start.
func TestServeTPMRoots(t *testing.T) {
	ca := ekca.New(t, "vendor A")
	dir := ca.WriteDir(t)
	recs, _ := runServeOnce(t, "-data-dir", t.TempDir(), "-tpm-roots", dir)
	r, ok := find(recs, "TPM roots loaded")
	if !ok || !strings.Contains(r.raw, `"roots":1`) || !strings.Contains(r.raw, `"intermediates":1`) {
		t.Fatalf("no TPM roots line: %+v", r)
	}

	broken := t.TempDir()
	if err := os.WriteFile(filepath.Join(broken, "bad.pem"), []byte("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{broken, t.TempDir(), filepath.Join(dir, "missing")} {
		var stderr bytes.Buffer
		code := run(context.Background(), []string{"serve", "-data-dir", t.TempDir(), "-mqtt-addr", "127.0.0.1:0", "-mqtts-addr", "",
			"-api-addr", "", "-tpm-roots", d}, &bytes.Buffer{}, &stderr)
		if code == 0 || !strings.Contains(stderr.String(), "tpm-roots") {
			t.Errorf("%s: exit %d, stderr %s", d, code, stderr.String())
		}
	}
}
