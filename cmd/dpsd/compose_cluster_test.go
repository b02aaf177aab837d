package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"

	"github.com/tpmdps/dpsd/internal/config"
)

// TestComposeClusterFile: compose.cluster.yaml runs three dpsd nodes from
// this repository's image, each with the secrets mounted at the secrets
// directory its environment names and a valid cluster configuration (an
// etcd store naming all three members); the three members name each
// other; the load balancer sends to every node.
func TestComposeClusterFile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "compose.cluster.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Build       string            `yaml:"build"`
			Environment map[string]string `yaml:"environment"`
			Secrets     []struct {
				Source, Target string
			} `yaml:"secrets"`
		} `yaml:"services"`
		Configs map[string]struct {
			Content string `yaml:"content"`
		} `yaml:"configs"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("compose.cluster.yaml: %v", err)
	}
	haproxy := c.Configs["haproxy"].Content
	for _, n := range []string{"dpsd-1", "dpsd-2", "dpsd-3"} {
		svc, ok := c.Services[n]
		if !ok || svc.Build != "." || len(svc.Secrets) != 1 || svc.Secrets[0].Target != svc.Environment["DPSD_SECRETS_DIR"] {
			t.Fatalf("%s: %+v", n, svc)
		}
		cfg, err := config.Load("dpsd serve", "", nil, func(k string) (string, bool) { v, ok := svc.Environment[k]; return v, ok }, io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		spec, err := parseStoreSpec(cfg.Store, cfg.DataDir)
		if err != nil || spec.engine != "etcd" {
			t.Fatalf("%s: store %q: %v", n, cfg.Store, err)
		}
		for _, m := range []string{"etcd-1:2379", "etcd-2:2379", "etcd-3:2379"} {
			if !strings.Contains(cfg.Store, m) {
				t.Errorf("%s: store %s does not name %s", n, cfg.Store, m)
			}
		}
		if strings.Count(haproxy, "server "+n+" ") != 2 {
			t.Errorf("haproxy does not send both ports to %s", n)
		}
	}
	for _, m := range []string{"etcd-1", "etcd-2", "etcd-3"} {
		env := c.Services[m].Environment
		if env["ETCD_NAME"] != m || strings.Count(env["ETCD_INITIAL_CLUSTER"], "=http://") != 3 {
			t.Errorf("%s: %v", m, env)
		}
	}
}
