package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/procnet"
	"github.com/tpmdps/dpsd/internal/testkit"
)

// readmeBlocks returns the fenced code blocks of the README that follow a
// "<!-- readme-test: NAME -->" line, by NAME: the commands the README tells
// a reader to paste, taken from the README itself at test time.
func readmeBlocks(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	marker := regexp.MustCompile(`^<!-- readme-test: ([a-z-]+) -->$`)
	blocks := map[string]string{}
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		m := marker.FindStringSubmatch(strings.TrimSpace(lines[i]))
		if m == nil {
			continue
		}
		if i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "```") {
			t.Fatalf("README.md line %d: marker %q is not followed by a fenced block", i+1, m[1])
		}
		var body []string
		j := i + 2
		for ; j < len(lines) && !strings.HasPrefix(lines[j], "```"); j++ {
			body = append(body, lines[j])
		}
		if j == len(lines) {
			t.Fatalf("README.md: the block of %q is not closed", m[1])
		}
		if _, dup := blocks[m[1]]; dup {
			t.Fatalf("README.md: two blocks named %q", m[1])
		}
		blocks[m[1]] = strings.Join(body, "\n") + "\n"
		i = j
	}
	return blocks
}

// portRewrite maps a port the README names to the free port the test uses
// instead (the README's ports may be taken on a shared machine), and
// requires that the README still names it where the test expects it.
type portRewrite struct {
	from, to string
	must     bool // the block must mention the port
}

// rewritePorts applies the rewrites to a README block.
func rewritePorts(t *testing.T, name, block string, rw []portRewrite) string {
	t.Helper()
	for _, r := range rw {
		re := regexp.MustCompile(`(^|[^0-9])` + regexp.QuoteMeta(r.from) + `($|[^0-9])`)
		if r.must && !re.MatchString(block) {
			t.Fatalf("README block %q no longer mentions %s (update this test with the README)", name, r.from)
		}
		block = re.ReplaceAllString(block, "${1}"+r.to+"${2}")
	}
	return block
}

// bash runs a README block with bash -euo pipefail in dir, with env, and
// returns its combined output; a failing command fails the test.
func bash(t *testing.T, name, dir string, env []string, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README block %q failed: %v\n--- script\n%s--- output\n%s", name, err, script, out)
	}
	return string(out)
}

// TestReadmeWalkthrough runs the README's local walk-through as written
// (the build, the server, a software TPM device, then mosquitto_rr with a
// symmetric key, then a device certificate checked by openssl) against the
// dpsd binary, swtpm and the mosquitto clients.
// Only the ports change: the README's fixed ports become free ones (dpsd's
// listeners through its DPSD_* variables, which the admin commands read
// too), so that the test can run beside anything.
func TestReadmeWalkthrough(t *testing.T) {
	blocks := readmeBlocks(t)
	for _, name := range []string{"build", "server", "device", "mosquitto", "certificate"} {
		if blocks[name] == "" {
			t.Fatalf("README.md has no block marked readme-test: %s", name)
		}
	}

	// The build, into a temporary bin/ instead of the work tree's.
	build := strings.TrimSpace(blocks["build"])
	if !strings.HasPrefix(build, "go build -o bin/ ") || strings.Contains(build, "\n") {
		t.Fatalf("the README's build step is not one `go build -o bin/ ...` line: %q", build)
	}
	work := t.TempDir()
	binDir := filepath.Join(t.TempDir(), "bin")
	buildCtx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(buildCtx, "bash", "-euo", "pipefail", "-c", strings.Replace(build, "-o bin/ ", "-o "+binDir+"/ ", 1))
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, out)
	}
	if err := os.Symlink(binDir, filepath.Join(work, "bin")); err != nil {
		t.Fatal(err)
	}

	// Ports and the environment every block runs with.
	mqtt, mqtts, api := testkit.FreeAddr(t), testkit.FreeAddr(t), testkit.FreeAddr(t)
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	tpmPort := testkit.FreePortPair(t)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DPSD_") {
			env = append(env, kv)
		}
	}
	env = append(env, "DPSD_MQTT_ADDR="+mqtt, "DPSD_MQTTS_ADDR="+mqtts, "DPSD_API_ADDR="+api)
	t.Cleanup(func() { // swtpm runs as a daemon: stop it by its port if the block did not
		if pid, err := procnet.ListeningPID(tpmPort); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	// Terminal 1: the server, until the test ends.
	hubs := regexp.MustCompile(`--hubs ([^ \n]+)`).FindStringSubmatch(blocks["server"])
	if hubs == nil {
		t.Fatalf("the README's server block names no --hubs: %q", blocks["server"])
	}
	srv := exec.Command("bash", "-euo", "pipefail", "-c", blocks["server"])
	srv.Dir, srv.Env = work, env
	srv.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logs := &testkit.LogBuffer{}
	stderr, err := srv.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	srv.Stdout = logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	started := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		seen := false
		for sc.Scan() {
			fmt.Fprintln(logs, sc.Text())
			if !seen && strings.Contains(sc.Text(), "dpsd started") {
				seen = true
				close(started)
			}
		}
		_ = srv.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-srv.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-srv.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	select {
	case <-started:
	case <-exited:
		t.Fatalf("the README's server exited:\n%s", logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("the README's server did not start:\n%s", logs.String())
	}

	// Terminal 2: the TPM device, then mosquitto_rr.
	device := rewritePorts(t, "device", blocks["device"], []portRewrite{
		{"2321", strconv.Itoa(tpmPort), true},
		{"2322", strconv.Itoa(tpmPort + 1), true},
		{"1883", port(mqtt), false},
	})
	if strings.Count(device, "--plain") != 1 {
		t.Fatalf("the README's device block should provision once with --plain: %q", device)
	}
	device = strings.Replace(device, "--plain", "--plain --port "+port(mqtt), 1)
	out := bash(t, "device", work, env, device)
	for _, want := range []string{`"status": "assigned"`, `"assignedHub": "` + hubs[1] + `"`, `"registrationId": "`} {
		if !strings.Contains(out, want) {
			t.Errorf("the TPM walk-through's output lacks %s:\n%s", want, out)
		}
	}
	// swtpm_ioctl -s asks swtpm to shut down; it exits a moment later.
	if !testkit.Poll(testkit.DefaultWait, func() bool {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(tpmPort), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	}) {
		t.Errorf("swtpm still listens %v after the README's stop command", testkit.DefaultWait)
	}

	mosq := rewritePorts(t, "mosquitto", blocks["mosquitto"], []portRewrite{
		{"8883", port(mqtts), true},
		{"1883", port(mqtt), false},
	})
	out = bash(t, "mosquitto", work, env, mosq)
	if !strings.Contains(out, `"status":"assigning"`) || !strings.Contains(out, `"status":"assigned"`) ||
		!strings.Contains(out, `"assignedHub":"`+hubs[1]+`"`) {
		t.Errorf("mosquitto_rr did not register and poll:\n%s", out)
	}
	// An operational certificate for a symmetric-key device, checked by
	// openssl against what dpsd ca export prints.
	cert := blocks["certificate"]
	if strings.Count(cert, "--plain") != 1 {
		t.Fatalf("the README's certificate block should provision once with --plain: %q", cert)
	}
	cert = strings.Replace(cert, "--plain", "--plain --port "+port(mqtt), 1)
	out = bash(t, "certificate", work, env, cert)
	for _, want := range []string{`"subject": "CN=meter-7"`, `"certificateFile": "meter-7.pem"`, "meter-7.pem: OK",
		"credentialPolicyName:", "certificateSerial:", "certificateNotAfter:"} {
		if !strings.Contains(out, want) {
			t.Errorf("the certificate walk-through's output lacks %s:\n%s", want, out)
		}
	}
	if bytes.Contains([]byte(logs.String()), []byte("level=ERROR")) {
		t.Errorf("the server logged errors:\n%s", logs.String())
	}
}
