package apiclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies: a client binary links neither a store engine (bbolt)
// nor the server API; it shares only the record types (package store) and
// the wire types (package api/wire) with the server. The closure is what
// `go list -deps` reports for this package, test files excluded.
func TestDependencies(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list dependencies: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-json=ImportPath", ".").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v: %s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	deps := map[string]bool{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct{ ImportPath string }
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		deps[p.ImportPath] = true
	}
	for _, want := range []string{"github.com/tpmdps/dpsd/apiclient", "github.com/tpmdps/dpsd/api/wire", "github.com/tpmdps/dpsd/store"} {
		if !deps[want] {
			t.Fatalf("the closure lacks %s: the listing is not what this test thinks (%d packages)", want, len(deps))
		}
	}
	for dep := range deps {
		switch {
		case dep == "go.etcd.io/bbolt" || strings.HasPrefix(dep, "go.etcd.io/bbolt/"):
			t.Errorf("apiclient links %s, a store engine", dep)
		case dep == "github.com/tpmdps/dpsd/api":
			t.Errorf("apiclient links %s, the server API", dep)
		case strings.HasPrefix(dep, "github.com/tpmdps/dpsd/store/") && dep != "github.com/tpmdps/dpsd/store":
			t.Errorf("apiclient links %s, a store engine or its tests", dep)
		}
	}
}
