package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"

	"github.com/tpmdps/dpsd/internal/config"
)

// repoRoot is the repository, two levels above this package.
const repoRoot = "../.."

// dockerignore is the repository's .dockerignore as matchers that follow
// Docker's rules (moby/patternmatcher): patterns are relative to the
// context root, * and ? stay within one path element, a leading **/
// matches any depth (none included), and a path is excluded when it or
// one of its parent directories matches.
type dockerignore []*regexp.Regexp

func readDockerignore(t *testing.T) dockerignore {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	var d dockerignore
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") {
			t.Fatalf(".dockerignore: exceptions (%q) are not checked by this test", line)
		}
		p := filepath.ToSlash(filepath.Clean(strings.TrimPrefix(line, "/")))
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(p); i++ {
			switch {
			case strings.HasPrefix(p[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(p[i:], "**"):
				re.WriteString(".*")
				i++
			case p[i] == '*':
				re.WriteString("[^/]*")
			case p[i] == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(p[i : i+1]))
			}
		}
		re.WriteString("$")
		d = append(d, regexp.MustCompile(re.String()))
	}
	return d
}

// excludes reports whether path (slash-separated, relative to the
// context root) is left out of the build context.
func (d dockerignore) excludes(path string) bool {
	parts := strings.Split(path, "/")
	for i := 1; i <= len(parts); i++ {
		prefix := strings.Join(parts[:i], "/")
		for _, re := range d {
			if re.MatchString(prefix) {
				return true
			}
		}
	}
	return false
}

// TestDockerignore: the build context never carries a data directory (the
// CA key and the policy keys), the store, .git, node modules or built
// binaries, and still carries every Go source the image is built from.
func TestDockerignore(t *testing.T) {
	d := readDockerignore(t)
	for _, p := range []string{
		"data", "data/ca-key.pem", "data/dpsd.db", "data/secrets.json",
		"tpm-state/tpm2-00.permall", "backup-2026-12-04.db",
		"other-data/ca-key.pem", "x/dpsd.db", "x/dpsd.db.key", "x/service-connection-string-read", "secrets.json",
		".git", ".git/config", "interop/node/node_modules/azure-iot-provisioning-device/package.json",
		"bin", "bin/dpsd", "dpsd", "dps-device", "dps-load", "cmd/dpsd/dpsd.test", "cpu.prof",
	} {
		if !d.excludes(p) {
			t.Errorf("%s is sent into the build context", p)
		}
	}
	// Every Go source, go.mod and go.sum stays in.
	n := 0
	err := filepath.WalkDir(repoRoot, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, path)
		rel = filepath.ToSlash(rel)
		if e.IsDir() {
			if e.Name() == ".git" || e.Name() == "node_modules" {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(rel, ".go") || rel == "go.mod" || rel == "go.sum" {
			n++
			if d.excludes(rel) {
				t.Errorf("%s is left out of the build context", rel)
			}
		}
		return nil
	})
	if err != nil || n < 100 {
		t.Fatalf("walked %d Go files: %v", n, err)
	}
}

// composeFile is the part of compose.yaml this test reads; unknown keys
// are errors (yaml.UnmarshalStrict), so a typo cannot hide.
type composeFile struct {
	Services map[string]struct {
		Build       string            `yaml:"build"`
		Image       string            `yaml:"image"`
		Restart     string            `yaml:"restart"`
		Ports       []string          `yaml:"ports"`
		Volumes     []string          `yaml:"volumes"`
		Environment map[string]string `yaml:"environment"`
	} `yaml:"services"`
	Volumes map[string]struct{} `yaml:"volumes"`
}

// TestComposeFile: compose.yaml builds this repository's image, keeps
// /data in a named volume, publishes the ports the image exposes, and its
// environment is a valid dpsd configuration on top of the image's.
func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	svc, ok := c.Services["dpsd"]
	if !ok || svc.Build != "." {
		t.Fatalf("compose.yaml: no service dpsd built from the repository: %+v", c.Services)
	}
	volume := ""
	for _, v := range svc.Volumes {
		if name, target, ok := strings.Cut(v, ":"); ok && target == "/data" {
			volume = name
		}
	}
	if _, declared := c.Volumes[volume]; volume == "" || !declared {
		t.Fatalf("/data is not a declared named volume: %q, volumes %v", svc.Volumes, c.Volumes)
	}
	d := readDockerfile(t)
	published := map[string]bool{}
	for _, p := range svc.Ports {
		parts := strings.Split(p, ":")
		published[parts[len(parts)-1]] = true
	}
	for _, e := range d.expose {
		if !published[strings.TrimSuffix(e, "/tcp")] {
			t.Errorf("exposed port %s is not published (%v)", e, svc.Ports)
		}
	}
	env := func(k string) (string, bool) {
		if v, ok := svc.Environment[k]; ok {
			return v, true
		}
		v, ok := d.env[k]
		return v, ok
	}
	for k := range svc.Environment {
		if !strings.HasPrefix(k, config.EnvPrefix) {
			t.Errorf("environment %s is not a dpsd setting", k)
		}
	}
	var out bytes.Buffer
	vals, cfg, err := config.Effective("dpsd serve", "", d.cmd[1:], env, &out)
	if err != nil {
		t.Fatalf("compose.yaml's environment: %v", err)
	}
	if placeholderHubs(cfg.Hubs) || cfg.DataDir != "/data" {
		t.Errorf("compose configuration: hubs %v, data-dir %s", cfg.Hubs, cfg.DataDir)
	}
	known := map[string]bool{}
	for _, v := range vals {
		known[v.Env] = true
	}
	for k := range svc.Environment {
		if !known[k] {
			t.Errorf("environment %s names no setting", k)
		}
	}
}
