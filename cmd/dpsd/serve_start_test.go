package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/internal/datadir"
)

// logRecord is one JSON log line of serve.
type logRecord struct {
	Level   string `json:"level"`
	Msg     string `json:"msg"`
	IDScope string `json:"idScope"`
	API     string `json:"api"`
	WSS     string `json:"wss"`
	Created *bool  `json:"created"`
	raw     string
}

// runServeOnce runs `dpsd serve args...` in this process with JSON logs
// until its start line, stops it, and returns its log records and stdout.
func runServeOnce(t *testing.T, args ...string) ([]logRecord, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var stdout bytes.Buffer
	done := make(chan int, 1)
	args = append([]string{"serve", "-mqtt-addr", "127.0.0.1:0", "-mqtts-addr", "",
		"-api-addr", "127.0.0.1:0", "-log-format", "json"}, args...)
	go func() {
		done <- run(ctx, args, &stdout, pw)
		pw.Close()
	}()
	var recs []logRecord
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	started := false
	for sc.Scan() {
		r := logRecord{raw: sc.Text()}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, sc.Text())
		}
		recs = append(recs, r)
		if r.Msg == "dpsd started" && !started {
			started = true
			cancel()
		}
	}
	if code := <-done; code != 0 || !started {
		t.Fatalf("serve exited with %d (started %v)", code, started)
	}
	return recs, stdout.String()
}

// count returns how many records have the message msg.
func count(recs []logRecord, msg string) int {
	n := 0
	for _, r := range recs {
		if r.Msg == msg {
			n++
		}
	}
	return n
}

// find returns the first record whose message starts with prefix.
func find(recs []logRecord, prefix string) (logRecord, bool) {
	for _, r := range recs {
		if strings.HasPrefix(r.Msg, prefix) {
			return r, true
		}
	}
	return logRecord{}, false
}

// TestServeStartHonesty: a new data directory logs one store line, not two
// migrations; the start line names where WebSocket is served; the placeholder
// hub is warned about until hubs is set; connection strings reach stdout only
// with --print-connection-strings; config print shows the generated scope.
func TestServeStartHonesty(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	recs, stdout := runServeOnce(t, "-data-dir", dir)
	if n := count(recs, "store: migrating"); n != 0 {
		t.Errorf("a new data directory logged %d migrations", n)
	}
	if r, ok := find(recs, "store: opened"); !ok || r.Created == nil || !*r.Created || count(recs, "store: opened") != 1 {
		t.Errorf("want one store: opened line with created=true: %+v", r)
	}
	st, _ := find(recs, "dpsd started")
	if st.WSS == "off" || st.WSS != st.API {
		t.Errorf("wss=%q although WebSocket is served on api %q", st.WSS, st.API)
	}
	w, ok := find(recs, "hubs is still the placeholder hub.localdomain")
	if !ok || w.Level != "WARN" {
		t.Errorf("no warning about the placeholder hub: %+v", w)
	}
	if stdout != "" {
		t.Errorf("stdout without --print-connection-strings: %q", stdout)
	}

	recs, stdout = runServeOnce(t, "-data-dir", dir, "-hubs", "hub.example.net", "--print-connection-strings")
	if _, ok := find(recs, "hubs is still the placeholder"); ok {
		t.Error("placeholder warning although hubs is set")
	}
	for _, file := range []string{datadir.ConnectionStringFile, datadir.ReadOnlyConnectionStringFile} {
		cs, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(stdout, strings.TrimSpace(string(cs))) {
			t.Errorf("--print-connection-strings did not print %s:\n%s", file, stdout)
		}
		key := strings.SplitN(strings.TrimSpace(string(cs)), "SharedAccessKey=", 2)[1]
		for _, r := range recs {
			if strings.Contains(r.raw, key) {
				t.Fatalf("a policy key in the log: %s", r.Msg)
			}
		}
	}

	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"config", "print", "id-scope", "--data-dir", dir}, &out, &errb); code != 0 ||
		strings.TrimSpace(out.String()) != st.IDScope {
		t.Errorf("config print id-scope: %d %q %s, want %q", code, out.String(), errb.String(), st.IDScope)
	}
	out.Reset()
	if code := run(context.Background(), []string{"config", "print", "--data-dir", dir}, &out, &errb); code != 0 {
		t.Fatalf("config print: %d %s", code, errb.String())
	}
	if !strings.Contains(out.String(), st.IDScope) || !strings.Contains(out.String(), "generated") {
		t.Errorf("config print does not show the generated scope %s:\n%s", st.IDScope, out.String())
	}
	for _, c := range []struct {
		args []string
		file string
	}{
		{[]string{"config", "connection-string", "--data-dir", dir}, datadir.ConnectionStringFile},
		{[]string{"config", "connection-string", "--read-only", "--data-dir", dir}, datadir.ReadOnlyConnectionStringFile},
	} {
		out.Reset()
		want, _ := os.ReadFile(filepath.Join(dir, c.file))
		if code := run(context.Background(), c.args, &out, &errb); code != 0 || out.String() != string(want) {
			t.Errorf("%v: %d %q, want %q", c.args, code, out.String(), want)
		}
	}
	empty := filepath.Join(t.TempDir(), "none")
	errb.Reset()
	if code := run(context.Background(), []string{"config", "connection-string", "--data-dir", empty}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "start dpsd serve once") {
		t.Errorf("connection-string without a data directory: %d %s", code, errb.String())
	}
	if _, err := os.Stat(empty); err == nil {
		t.Error("config connection-string created a data directory")
	}
	if code := run(context.Background(), []string{"config", "print", "no-such-setting"}, &out, &errb); code != 2 {
		t.Errorf("config print of an unknown setting: %d", code)
	}
}
