// Package swtpmtest is a test harness for the independent TPM stack: it
// starts a swtpm (libtpms) process and drives it with the tpm2-tools command
// line tools, so that tests can check that what this project writes (EK and
// SRK parsing, activation blobs, SAS signatures) works on a TPM
// implementation and a device stack other than go-tpm and the Microsoft
// reference simulator.
//
// Every swtpm is a child process of the test, on free 127.0.0.1 ports,
// killed by t.Cleanup. When swtpm or tpm2-tools is missing the test FAILS
// with the name of the Debian package to install (scripts/test.sh installs
// them); it never skips.
//
// swtpm has no resource manager and 3 transient object slots, and every
// tpm2-tools invocation that is given a context file loads a new copy of the
// object: the harness flushes all transient objects after each tool.
package swtpmtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/testkit"
)

// toolTimeout bounds one tpm2-tools invocation and swtpm's start.
const toolTimeout = 30 * time.Second

// Debian packages of the independent TPM stack (docs/architecture.md, "Tests").
const installHint = "apt-get install -y swtpm swtpm-tools tpm2-tools libtss2-tcti-swtpm0 (scripts/test.sh does this)"

// EKAlg selects the endorsement key algorithm for CreateEK.
type EKAlg string

// EK algorithms, as tpm2_createek -G spells them.
const (
	EKRSA EKAlg = "rsa"
	EKECC EKAlg = "ecc"
)

// SRKVariant selects a storage root key template for CreateSRK.
type SRKVariant int

// SRK variants.
const (
	// SRKRSAEmptyUnique is RSA-2048 with an empty unique (Azure C SDK).
	SRKRSAEmptyUnique SRKVariant = iota
	// SRKRSAZeroUnique is RSA-2048 with 256 zero bytes of unique (TCG, C#),
	// piped to tpm2_createprimary -u - (a file gives an empty unique).
	SRKRSAZeroUnique
	// SRKECCEmptyUnique is ECC NIST P-256 with an empty unique.
	SRKECCEmptyUnique
)

// TPM is one running swtpm with the EK and SRK the test created on it.
type TPM struct {
	dir   string
	state string
	port  int
	stop  func()
	// ekCtx and srkCtx are tpm2-tools context files, set by CreateEK and
	// CreateSRK.
	ekCtx, srkCtx string
	seq           int
}

// Key is an identity key activated with tpm2-tools (tpm2_import +
// tpm2_load), usable with HMAC.
type Key struct {
	tpm *TPM
	ctx string
	// Public and Private are the TPM2B_PUBLIC and TPM2B_PRIVATE files'
	// bytes as tpm2_import wrote them.
	Public, Private []byte
}

// CheckTools fails t, loudly, if swtpm, tpm2-tools or the swtpm TCTI is
// missing.
func CheckTools(t testing.TB) {
	t.Helper()
	var missing []string
	for _, bin := range []string{"swtpm", "tpm2_createek", "tpm2_createprimary", "tpm2_startauthsession",
		"tpm2_policysecret", "tpm2_activatecredential", "tpm2_import", "tpm2_load", "tpm2_hmac",
		"tpm2_flushcontext", "tpm2_readpublic"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	libs, _ := filepath.Glob("/usr/lib/*/libtss2-tcti-swtpm.so*")
	libs2, _ := filepath.Glob("/usr/lib/libtss2-tcti-swtpm.so*")
	if len(libs)+len(libs2) == 0 {
		missing = append(missing, "libtss2-tcti-swtpm.so")
	}
	if len(missing) > 0 {
		t.Fatalf("\n\n*** swtpmtest: the independent TPM stack is NOT INSTALLED (missing: %s).\n*** Install it: %s\n*** These tests do not skip.\n\n",
			strings.Join(missing, ", "), installHint)
	}
}

// Start starts a swtpm with a fresh state on free ports, waits until it
// accepts connections, and registers its shutdown (and the removal of its
// state) with t.Cleanup.
func Start(t testing.TB) *TPM {
	t.Helper()
	return StartDir(t, "")
}

// StartDir is Start on the TPM state in stateDir, so that a test can stop a
// swtpm and start it again with the same EK, SRK and persistent objects.
// An empty stateDir means a fresh one.
func StartDir(t testing.TB, stateDir string) *TPM {
	t.Helper()
	CheckTools(t)
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		p, err := startOnce(t, stateDir)
		if err == nil {
			return p
		}
		lastErr = err // most likely a port taken between probing and binding
	}
	t.Fatalf("swtpmtest: start swtpm: %v", lastErr)
	return nil
}

// startOnce starts swtpm on one pair of free ports.
func startOnce(t testing.TB, state string) (*TPM, error) {
	port, err := testkit.FindFreePorts(2) // command and control
	if err != nil {
		return nil, err
	}
	dir := t.TempDir()
	if state == "" {
		state = filepath.Join(dir, "state")
		if err := os.Mkdir(state, 0o700); err != nil {
			return nil, err
		}
	}
	var stderr bytes.Buffer
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+state,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
		"--flags", "not-need-init,startup-clear")
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run swtpm: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var stopped sync.Once
	stop := func() {
		stopped.Do(func() {
			_ = cmd.Process.Kill()
			<-exited
		})
	}
	deadline := time.Now().Add(toolTimeout)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			_ = c.Close()
			break
		}
		select {
		case werr := <-exited:
			return nil, fmt.Errorf("swtpm exited before listening (%v): %s", werr, stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("swtpm did not listen on port %d within %v", port, toolTimeout)
		}
	}
	t.Cleanup(stop)
	return &TPM{dir: dir, state: state, port: port, stop: stop}, nil
}

// Port returns swtpm's TPM command port on 127.0.0.1 (the control port is
// Port()+1). go-tpm needs a swtpm-protocol transport to use it.
func (p *TPM) Port() int { return p.port }

// Addr returns swtpm's TPM command socket, "127.0.0.1:port".
func (p *TPM) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

// Selector returns the device/tpmtransport selector of this swtpm.
func (p *TPM) Selector() string { return "swtpm:" + p.Addr() }

// StateDir returns the directory holding the TPM state; it outlives Stop.
func (p *TPM) StateDir() string { return p.state }

// Stop kills the swtpm process and waits for it to exit. Safe to call twice.
func (p *TPM) Stop() { p.stop() }

// TCTI returns the TPM2TOOLS_TCTI value for this swtpm.
func (p *TPM) TCTI() string { return "swtpm:host=127.0.0.1,port=" + strconv.Itoa(p.port) }

// Run runs a tpm2-tools command against this swtpm with stdin as its input,
// fails t (with the tool's output) if it fails, and returns its stdout. It
// then flushes every transient object, so that slots never run out.
func (p *TPM) Run(t testing.TB, stdin []byte, tool string, args ...string) []byte {
	t.Helper()
	out := p.run(t, stdin, tool, args...)
	p.run(t, nil, "tpm2_flushcontext", "--transient-object")
	return out
}

// run runs a tool without flushing.
func (p *TPM) run(t testing.TB, stdin []byte, tool string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+p.TCTI())
	cmd.Dir = p.dir
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("swtpmtest: %s %s: %v\n%s%s", tool, strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.Bytes()
}

// RunErr is Run for commands expected to fail: it returns the tool's error
// and output instead of failing t.
func (p *TPM) RunErr(t testing.TB, stdin []byte, tool string, args ...string) (out []byte, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+p.TCTI())
	cmd.Dir = p.dir
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err = cmd.CombinedOutput()
	p.run(t, nil, "tpm2_flushcontext", "--transient-object")
	return out, err
}

// file returns a fresh file name in the TPM's directory.
func (p *TPM) file(name string) string {
	p.seq++
	return filepath.Join(p.dir, fmt.Sprintf("%03d-%s", p.seq, name))
}

// readFile reads a file the tools wrote.
func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	return b
}

// writeFile writes an input file for the tools (0600: it may hold keys).
func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
}

// CreateEK creates the TCG default EK (tpm2_createek) and returns its
// TPM2B_PUBLIC bytes, as tpm2_readpublic exports them. Later activations use
// this EK.
func (p *TPM) CreateEK(t testing.TB, alg EKAlg) []byte {
	t.Helper()
	p.ekCtx = p.file("ek.ctx")
	pub := p.file("ek.pub")
	p.Run(t, nil, "tpm2_createek", "-c", p.ekCtx, "-G", string(alg), "-u", pub)
	return p.readPublic(t, p.ekCtx, readFile(t, pub))
}

// CreateSRK creates a storage root key of the given variant
// (tpm2_createprimary in the owner hierarchy, the TCG SRK attributes) and
// returns its TPM2B_PUBLIC bytes. Later activations use this SRK.
func (p *TPM) CreateSRK(t testing.TB, v SRKVariant) []byte {
	t.Helper()
	p.srkCtx = p.file("srk.ctx")
	pub := p.file("srk.pub")
	args := []string{"-C", "o", "-g", "sha256", "-c", p.srkCtx, "-o", pub,
		"-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt"}
	var stdin []byte
	switch v {
	case SRKRSAEmptyUnique:
		args = append(args, "-G", "rsa2048:null:aes128cfb")
	case SRKRSAZeroUnique:
		args = append(args, "-G", "rsa2048:null:aes128cfb", "-u", "-")
		stdin = make([]byte, 256)
	case SRKECCEmptyUnique:
		args = append(args, "-G", "ecc256:null:aes128cfb")
	default:
		t.Fatalf("swtpmtest: unknown SRK variant %d", v)
	}
	p.Run(t, stdin, "tpm2_createprimary", args...)
	return p.readPublic(t, p.srkCtx, readFile(t, pub))
}

// readPublic exports an object's public with tpm2_readpublic -f tss (a
// TPM2B_PUBLIC) and checks it against what the creating tool wrote.
func (p *TPM) readPublic(t testing.TB, ctx string, created []byte) []byte {
	t.Helper()
	out := p.file("readpublic.pub")
	p.Run(t, nil, "tpm2_readpublic", "-c", ctx, "-f", "tss", "-o", out)
	pub := readFile(t, out)
	if !bytes.Equal(pub, created) {
		t.Fatalf("swtpmtest: tpm2_readpublic exported %x, the creating tool %x", pub, created)
	}
	if len(pub) < 2 || int(binary.BigEndian.Uint16(pub)) != len(pub)-2 {
		t.Fatalf("swtpmtest: exported public is not a TPM2B_PUBLIC: %x", pub)
	}
	return pub
}

// credentialFileMagic and credentialFileVersion start a tpm2-tools
// credential file (tpm2_makecredential's output format).
const (
	credentialFileMagic   = 0xBADCC0DE
	credentialFileVersion = 1
)

// blobParts splits a six-part activation blob (docs/protocol.md section 5) into its
// size-prefixed parts; written here rather than imported so that the harness
// checks attest's output independently.
func blobParts(t testing.TB, blob []byte) [6][]byte {
	t.Helper()
	var parts [6][]byte
	rest := blob
	for i := range parts {
		if len(rest) < 2 || int(binary.BigEndian.Uint16(rest)) > len(rest)-2 {
			t.Fatalf("swtpmtest: activation blob part %d is truncated", i+1)
		}
		n := 2 + int(binary.BigEndian.Uint16(rest))
		parts[i], rest = rest[:n], rest[n:]
	}
	if len(rest) != 0 {
		t.Fatalf("swtpmtest: %d bytes after the sixth part of the activation blob", len(rest))
	}
	return parts
}

// ActivateBlob opens an activation blob with tpm2-tools, using the EK and
// SRK created last: tpm2_startauthsession --policy-session,
// tpm2_policysecret -c e, tpm2_activatecredential (credentialed key = SRK,
// credential key = EK), tpm2_import with the recovered inner key (-k, AES-128
// CFB), tpm2_load. It fails t if any step fails; ActivateBlobErr reports it.
func (p *TPM) ActivateBlob(t testing.TB, blob []byte) *Key {
	t.Helper()
	k, err := p.ActivateBlobErr(t, blob)
	if err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	return k
}

// ActivateBlobErr is ActivateBlob returning the failing tool's error (with
// its output) instead of failing t, for negative tests.
func (p *TPM) ActivateBlobErr(t testing.TB, blob []byte) (*Key, error) {
	t.Helper()
	if p.ekCtx == "" || p.srkCtx == "" {
		t.Fatal("swtpmtest: ActivateBlob needs CreateEK and CreateSRK first")
	}
	parts := blobParts(t, blob)
	cred := binary.BigEndian.AppendUint32(nil, credentialFileMagic)
	cred = binary.BigEndian.AppendUint32(cred, credentialFileVersion)
	cred = append(cred, parts[0]...) // TPM2B_ID_OBJECT
	cred = append(cred, parts[1]...) // TPM2B_ENCRYPTED_SECRET
	credFile, innerFile := p.file("cred.in"), p.file("inner.key")
	dupFile, seedFile, pubFile := p.file("dup.priv"), p.file("seed.bin"), p.file("id.pub")
	privFile, idCtx := p.file("id.priv"), p.file("id.ctx")
	writeFile(t, credFile, cred)
	writeFile(t, dupFile, parts[2])
	writeFile(t, seedFile, parts[3])
	writeFile(t, pubFile, parts[4])

	sess := p.file("session.ctx")
	p.Run(t, nil, "tpm2_startauthsession", "--policy-session", "-S", sess)
	defer func() {
		if out, err := p.RunErr(t, nil, "tpm2_flushcontext", sess); err != nil {
			t.Errorf("swtpmtest: flush policy session: %v\n%s", err, out)
		}
	}()
	p.Run(t, nil, "tpm2_policysecret", "-S", sess, "-c", "e")
	steps := [][]string{
		{"tpm2_activatecredential", "-c", p.srkCtx, "-C", p.ekCtx, "-i", credFile, "-o", innerFile, "-P", "session:" + sess},
		{"tpm2_import", "-C", p.srkCtx, "-u", pubFile, "-i", dupFile, "-s", seedFile, "-k", innerFile, "-r", privFile},
		{"tpm2_load", "-C", p.srkCtx, "-u", pubFile, "-r", privFile, "-c", idCtx},
	}
	for _, s := range steps {
		if out, err := p.RunErr(t, nil, s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("%s: %w\n%s", s[0], err, out)
		}
	}
	return &Key{tpm: p, ctx: idCtx, Public: parts[4], Private: readFile(t, privFile)}, nil
}

// HMAC computes HMAC-SHA256 of data with the key in swtpm (tpm2_hmac).
func (k *Key) HMAC(t testing.TB, data []byte) []byte {
	t.Helper()
	in, out := k.tpm.file("hmac.in"), k.tpm.file("hmac.out")
	writeFile(t, in, data)
	k.tpm.Run(t, nil, "tpm2_hmac", "-c", k.ctx, "-g", "sha256", "-o", out, in)
	return readFile(t, out)
}
