// Package mosquittotest runs an Eclipse Mosquitto broker (the Debian
// package mosquitto, /usr/sbin/mosquitto) for a test: TLS on a free
// loopback port, client certificates required and verified against the CA
// file the test gives, the certificate's CN as the username, and an
// optional ACL. It is how tests prove that the certificates dpsd issues
// are what a real broker accepts, and that it refuses the others.
//
// The broker runs in the foreground as a child process with a config of
// its own (never the system's) in t.TempDir(), logs to a file there (Log), and is
// stopped with SIGTERM when the test ends. Mosquitto cannot bind port 0,
// so the port is picked with testkit.FreePort. As root, mosquitto drops
// privileges to "mosquitto" or "nobody" before it reads its TLS files, which
// a 0700 temporary directory hides: the config then says "user root".
//
// Like the rest of testkit it imports no package of this module outside
// internal/testkit.
package mosquittotest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/internal/testkit"
)

// Binary is where the Debian package installs the broker.
const Binary = "/usr/sbin/mosquitto"

// Options configure a broker.
type Options struct {
	// CAFile is the PEM file of the certificates trusted for clients
	// (mosquitto's cafile): what `dpsd ca export` prints. Required.
	CAFile string
	// ACL, when not empty, is the content of the broker's acl_file, e.g.
	// "pattern readwrite devices/%u/#". Empty: no ACL (any authenticated
	// client may use any topic).
	ACL string
}

// Broker is a running mosquitto.
type Broker struct {
	// Addr is its TLS listener, 127.0.0.1:PORT.
	Addr string
	// ServerCAFile is the PEM file of the CA of the broker's own server
	// certificate (names localhost and 127.0.0.1), for clients' --cafile;
	// ServerCAs holds it.
	ServerCAFile string
	ServerCAs    *x509.CertPool
	// Dir is the broker's directory (config, ACL, TLS files).
	Dir string

	logFile string             // the broker's log (stdout is buffered until it exits)
	out     *testkit.LogBuffer // its stdout and stderr: errors before the log opens
}

// Start starts a broker and waits until it listens; the test fails (it is
// never skipped) when mosquitto is not installed or does not start.
func Start(t testing.TB, opts Options) *Broker {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Fatalf("mosquittotest: %v: install the Debian package mosquitto (apt-get install mosquitto; scripts/test.sh does)", err)
	}
	if opts.CAFile == "" {
		t.Fatal("mosquittotest: Options.CAFile is required")
	}
	dir := t.TempDir()
	b := &Broker{Dir: dir, ServerCAFile: filepath.Join(dir, "server-ca.pem"), out: &testkit.LogBuffer{}}
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	b.ServerCAs = writeServerTLS(t, b.ServerCAFile, certFile, keyFile)

	port := testkit.FreePort(t)
	b.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var conf strings.Builder
	if os.Geteuid() == 0 {
		conf.WriteString("user root\n")
	}
	b.logFile = filepath.Join(dir, "mosquitto.log")
	fmt.Fprintf(&conf, `per_listener_settings false
persistence false
log_dest file %s
log_type all
allow_anonymous false
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
`, b.logFile, port, opts.CAFile, certFile, keyFile)
	if opts.ACL != "" {
		aclFile := filepath.Join(dir, "acl")
		if err := os.WriteFile(aclFile, []byte(opts.ACL+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&conf, "acl_file %s\n", aclFile)
	}
	confFile := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(confFile, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(Binary, "-c", confFile)
	cmd.Stdout, cmd.Stderr = b.out, b.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("mosquittotest: start: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	testkit.Await(t, "mosquitto to listen on "+b.Addr, func() bool {
		select {
		case <-exited:
			t.Fatalf("mosquittotest: mosquitto exited:\n%s", b.Log())
		default:
		}
		if !strings.Contains(b.Log(), " running") {
			return false
		}
		c, err := net.DialTimeout("tcp", b.Addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return b
}

// Log returns what the broker has logged so far, then anything it wrote
// to stdout or stderr.
func (b *Broker) Log() string {
	data, _ := os.ReadFile(b.logFile)
	return string(data) + b.out.String()
}

// ClientTLS is a TLS configuration for a client of b presenting cert (nil:
// none), trusting the broker's server certificate.
func (b *Broker) ClientTLS(cert *tls.Certificate) *tls.Config {
	c := &tls.Config{RootCAs: b.ServerCAs, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// writeServerTLS writes a CA and a server certificate for localhost and
// 127.0.0.1 signed by it (ECDSA P-256, valid a day) and returns a pool
// holding the CA.
func writeServerTLS(t testing.TB, caFile, certFile, keyFile string) *x509.CertPool {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mosquittotest server CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for f, data := range map[string][]byte{
		caFile:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyFile:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool
}
