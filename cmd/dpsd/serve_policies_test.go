package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpmdps/dpsd/internal/datadir"
)

// TestServeReadOnlyPolicy: dpsd generates an owner and a read-only service
// policy; the read-only connection string lists enrollments but cannot
// create one, the owner's can. Neither key reaches stdout (without
// --print-connection-strings) nor the log.
func TestServeReadOnlyPolicy(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dataDir := t.TempDir()
	pr, pw := io.Pipe()
	var stdout bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "-data-dir", dataDir, "-mqtt-addr", "127.0.0.1:0", "-mqtts-addr", "",
			"-api-addr", "127.0.0.1:0", "-log-format", "json"}, &stdout, pw)
		pw.Close()
	}()
	var logs bytes.Buffer
	sc := bufio.NewScanner(pr)
	apiAddr := ""
	for apiAddr == "" && sc.Scan() {
		logs.Write(sc.Bytes())
		var line struct {
			Msg string `json:"msg"`
			API string `json:"api"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "dpsd started" {
			apiAddr = line.API
		}
	}
	if apiAddr == "" {
		t.Fatal("no start line")
	}
	drained := make(chan struct{})
	go func() { // keep draining the log so that dpsd never blocks on it
		defer close(drained)
		for sc.Scan() {
			logs.Write(sc.Bytes())
		}
	}()

	readCS, err := os.ReadFile(filepath.Join(dataDir, datadir.ReadOnlyConnectionStringFile))
	if err != nil {
		t.Fatal(err)
	}
	ownerCS, err := os.ReadFile(filepath.Join(dataDir, datadir.ConnectionStringFile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readCS), "SharedAccessKeyName=provisioningservicereader;") {
		t.Fatalf("read-only connection string names another policy: %s", strings.Split(string(readCS), ";")[1])
	}
	admin := func(cs []byte, args ...string) (int, string) {
		var out, errb bytes.Buffer
		args = append(args, "--connection-string", strings.TrimSpace(string(cs)),
			"--endpoint", "https://"+apiAddr, "--ca-file", filepath.Join(dataDir, "ca.pem"))
		code := run(ctx, args, &out, &errb)
		return code, out.String() + errb.String()
	}
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	if code, out := admin(readCS, "enrollment", "add", "dev-ro", "--symmetric-key", key); code == 0 {
		t.Fatalf("the read-only policy created an enrollment: %s", out)
	}
	if code, out := admin(ownerCS, "enrollment", "add", "dev-ro", "--symmetric-key", key); code != 0 {
		t.Fatalf("owner add: exit %d: %s", code, out)
	}
	code, out := admin(readCS, "enrollment", "list")
	if code != 0 || !strings.Contains(out, "dev-ro") {
		t.Fatalf("read-only list: exit %d: %s", code, out)
	}

	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	<-drained
	for _, cs := range [][]byte{readCS, ownerCS} {
		secret := strings.TrimSpace(strings.SplitN(string(cs), "SharedAccessKey=", 2)[1])
		if strings.Contains(stdout.String(), secret) || strings.Contains(logs.String(), secret) {
			t.Fatal("a policy key was written to stdout or the log")
		}
	}
}

// TestPrintConnectionStrings is what dpsd serve --print-connection-strings
// shows: both connection strings and where they are kept.
func TestPrintConnectionStrings(t *testing.T) {
	d, err := datadir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	printConnectionStrings(&b, "dps.example.net", d)
	for _, want := range []string{
		datadir.ConnectionString("dps.example.net", "provisioningserviceowner", d.Secrets.ServicePolicyKey),
		datadir.ConnectionString("dps.example.net", "provisioningservicereader", d.Secrets.ServiceReadPolicyKey),
		d.File(datadir.ReadOnlyConnectionStringFile),
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}
}
