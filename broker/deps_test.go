package broker_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestBrokerKnowsNoProvisioning: the broker builds and runs an MQTT server
// with the hook it is given; it links none of the provisioning packages
// (`go list -deps`), so that the MQTT layer can be read, tested and reused
// without them.
func TestBrokerKnowsNoProvisioning(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list the broker's dependencies: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}", "github.com/tpmdps/dpsd/broker").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 || deps[len(deps)-1] != "github.com/tpmdps/dpsd/broker" {
		t.Fatalf("go list -deps listed %d packages, not ending with the broker: %q", len(deps), out)
	}
	for _, dep := range deps {
		for _, forbidden := range []string{"hooks", "provision", "attest", "store", "api"} {
			if p := "github.com/tpmdps/dpsd/" + forbidden; dep == p || strings.HasPrefix(dep, p+"/") {
				t.Errorf("broker depends on %s", dep)
			}
		}
	}
}
