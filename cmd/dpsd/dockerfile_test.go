package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/internal/config"
)

// dockerfile is the parsed instructions of the repository's Dockerfile
// (no Docker engine runs here: this checks what can be checked without one).
type dockerfile struct {
	from        []string
	env         map[string]string
	cmd, health []string
	entrypoint  []string
	expose      []string
	user        string
	volumes     string
	copies      []string
}

func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	d := dockerfile{env: map[string]string{}}
	jsonArray := func(s string) []string {
		var a []string
		if err := json.Unmarshal([]byte(strings.TrimSpace(s)), &a); err != nil {
			t.Fatalf("Dockerfile: %q is not an exec-form JSON array: %v", s, err)
		}
		return a
	}
	// Join continuation lines.
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		instr, rest, _ := strings.Cut(line, " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			d.from = append(d.from, rest)
		case "ENV":
			k, v, ok := strings.Cut(rest, "=")
			if !ok || strings.ContainsAny(strings.TrimSpace(k), " \t") {
				t.Fatalf("Dockerfile: ENV %q: write one KEY=value per ENV line", rest)
			}
			v = strings.TrimSpace(v)
			if uq, err := strconv.Unquote(v); err == nil {
				v = uq
			}
			d.env[strings.TrimSpace(k)] = v
		case "CMD":
			d.cmd = jsonArray(rest)
		case "ENTRYPOINT":
			d.entrypoint = jsonArray(rest)
		case "HEALTHCHECK":
			_, after, ok := strings.Cut(rest, "CMD ")
			if !ok {
				t.Fatalf("HEALTHCHECK without CMD: %q", rest)
			}
			d.health = jsonArray(after)
		case "EXPOSE":
			d.expose = strings.Fields(rest)
		case "USER":
			d.user = rest
		case "VOLUME":
			d.volumes = rest
		case "COPY":
			d.copies = append(d.copies, rest)
		}
	}
	return d
}

// TestDockerfile checks the image's command line against dpsd's own
// configuration parsing and the health command's defaults.
func TestDockerfile(t *testing.T) {
	d := readDockerfile(t)
	if len(d.from) != 2 || !strings.HasPrefix(d.from[0], "golang:1.26") || !strings.HasPrefix(d.from[1], "gcr.io/distroless/static-debian12:nonroot") {
		t.Fatalf("stages %q", d.from)
	}
	if d.user == "" || d.user == "root" || strings.HasPrefix(d.user, "0") {
		t.Fatalf("USER %q", d.user)
	}
	if !strings.Contains(d.volumes, "/data") {
		t.Fatalf("VOLUME %q", d.volumes)
	}
	if len(d.entrypoint) != 1 || len(d.health) < 2 || d.health[0] != d.entrypoint[0] || d.health[1] != "health" {
		t.Fatalf("entrypoint %q healthcheck %q", d.entrypoint, d.health)
	}
	binCopied := false
	for _, c := range d.copies {
		binCopied = binCopied || strings.HasSuffix(c, " "+d.entrypoint[0])
	}
	if !binCopied {
		t.Fatalf("no COPY puts the binary at %s", d.entrypoint[0])
	}
	// The settings are ENV, not flags of CMD: docker exec dpsd dpsd config
	// print (and the admin commands run there) see what serve runs with.
	if len(d.cmd) != 1 || d.cmd[0] != "serve" {
		t.Fatalf("CMD %q: the image's settings belong in ENV DPSD_* lines, where docker exec ... dpsd config print sees them", d.cmd)
	}
	env := func(k string) (string, bool) { v, ok := d.env[k]; return v, ok }
	var out bytes.Buffer
	vals, cfg, err := config.Effective("dpsd serve", "", d.cmd[1:], env, &out)
	if err != nil {
		t.Fatalf("the Dockerfile's settings do not parse: %v\n%s", err, out.String())
	}
	if cfg.DataDir != "/data" || cfg.MQTTAddr != "" || cfg.LogFormat != "json" {
		t.Fatalf("container config %+v", cfg)
	}
	for k := range d.env {
		if !strings.HasPrefix(k, config.EnvPrefix) {
			t.Errorf("ENV %s is not a dpsd setting", k)
		}
	}
	for _, v := range vals {
		if _, set := d.env[v.Env]; set && v.Source != config.SourceEnv {
			t.Errorf("ENV %s is not what config print reports for %s (%s)", v.Env, v.Name, v.Source)
		}
	}
	for _, name := range []string{"data-dir", "mqtt-addr", "mqtts-addr", "api-addr", "log-format"} {
		for _, v := range vals {
			if v.Name == name && v.Source != config.SourceEnv {
				t.Errorf("%s comes from %s, not from the image's ENV", name, v.Source)
			}
		}
	}
	for _, addr := range []string{cfg.MQTTSAddr, cfg.APIAddr} {
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host != "" {
			t.Fatalf("container listener %q must bind every interface", addr)
		}
		exposed := false
		for _, e := range d.expose {
			exposed = exposed || e == port || e == port+"/tcp"
		}
		if !exposed {
			t.Errorf("port %s is not EXPOSEd (%v)", port, d.expose)
		}
	}
	// The HEALTHCHECK probes the API listener's port on loopback.
	_, apiPort, _ := net.SplitHostPort(cfg.APIAddr)
	if got := healthDefaultURL(env); got != "https://127.0.0.1:"+apiPort+"/readyz" {
		t.Fatalf("health probes %s, the API listens on %s", got, cfg.APIAddr)
	}
	// The same flags reach `dpsd serve --help` (no unknown flag).
	var help, errb bytes.Buffer
	if code := run(t.Context(), append([]string{"serve"}, append(d.cmd[1:], "--help")...), &help, &errb); code != 0 {
		t.Fatalf("serve %v --help: %d %s", d.cmd[1:], code, errb.String())
	}
}

// TestStaticBuild builds dpsd with CGO_ENABLED=0, as the Dockerfile does:
// it must not depend on the cgo TPM simulator.
func TestStaticBuild(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	bin := filepath.Join(t.TempDir(), "dpsd")
	cmd := exec.Command(goTool, "build", "-trimpath", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	out, err := exec.Command(goTool, "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "CGO_ENABLED=0") {
		t.Fatalf("not a cgo-free build:\n%s", out)
	}
	if strings.Contains(string(out), "go-tpm-tools") {
		t.Fatalf("dpsd links go-tpm-tools (the cgo simulator):\n%s", out)
	}
	help, err := exec.Command(bin, "health", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(help), "Usage: dpsd health") {
		t.Fatalf("static binary: %v\n%s", err, help)
	}
}
