package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/device/tpmtransport"
	"github.com/tpmdps/dpsd/internal/etcdtest"
)

// The reference simulator is one instance per process: the tests of this
// package share it (one EK, one TPM device identity), opened once.
var sharedSim struct {
	once sync.Once
	tpm  transport.TPMCloser
	err  error
}

func TestMain(m *testing.M) {
	// The cluster test runs etcd members as children: this binary again.
	etcdtest.RunChildIfAsked()
	code := m.Run()
	if sharedSim.tpm != nil {
		_ = sharedSim.tpm.Close()
	}
	os.Exit(code)
}

// simulator returns the shared in-process reference simulator.
func simulator(t testing.TB) transport.TPM {
	t.Helper()
	sharedSim.once.Do(func() { sharedSim.tpm, sharedSim.err = tpmtransport.OpenSimulator() })
	if sharedSim.err != nil {
		t.Fatalf("simulator: %v", sharedSim.err)
	}
	return sharedSim.tpm
}

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard limit and fails
// the test when fewer than need descriptors are possible.
func raiseFileLimit(t testing.TB, need uint64) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			t.Fatalf("setrlimit: %v", err)
		}
	}
	if rl.Cur < need {
		t.Fatalf("RLIMIT_NOFILE is %d, the test needs %d", rl.Cur, need)
	}
}

// randomKey returns n random bytes.
func randomKey(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// floodIP returns the i-th loopback source address used by flooders
// (127.0.1.1 .. 127.0.1.n): the real devices connect from 127.0.0.1, so the
// per-address limits the flood runs into are not theirs.
func floodIP(i, n int) net.IP { return net.IPv4(127, 0, 1, byte(1+i%n)) }

// dialFrom opens a TCP connection to addr from the source IP.
func dialFrom(ip net.IP, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 10 * time.Second}
	return d.Dial("tcp", addr)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// heapInUse returns the live heap after a GC.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// resources samples goroutines and heap.
type resources struct {
	goroutines int
	heap       uint64
}

func sample() resources { return resources{runtime.NumGoroutine(), heapInUse()} }

func (r resources) String() string {
	return fmt.Sprintf("%d goroutines, %.1f MiB heap", r.goroutines, float64(r.heap)/(1<<20))
}

// expectBaseline waits until goroutines and heap are back near base.
func expectBaseline(t testing.TB, base resources) {
	t.Helper()
	var now resources
	deadline := time.Now().Add(30 * time.Second)
	for {
		now = sample()
		if now.goroutines <= base.goroutines+40 && now.heap <= base.heap+64<<20 {
			t.Logf("after the flood: %v (baseline %v)", now, base)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("resources did not return to baseline: %v, baseline %v", now, base)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// provisionOK runs one Provision and fails unless it ends assigned.
func provisionOK(t testing.TB, ctx context.Context, cfg device.Config) *device.Result {
	t.Helper()
	res, err := device.Provision(ctx, cfg)
	if err != nil {
		t.Fatalf("provisioning %s: %v", cfg.RegistrationID, err)
	}
	if res.Status != device.StatusAssigned {
		t.Fatalf("provisioning %s: status %q", cfg.RegistrationID, res.Status)
	}
	return res
}

// --- a minimal MQTT 3.1.1 client for flooders (no library: floods need
// exact control over what is and is not sent) ---

func mqttString(b *bytes.Buffer, s string) {
	_ = binary.Write(b, binary.BigEndian, uint16(len(s)))
	b.WriteString(s)
}

// packet frames an MQTT control packet.
func packet(first byte, body []byte) []byte {
	out := []byte{first}
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

// connectPacket is a CONNECT with clean session, keep-alive 0 and an
// optional password.
func connectPacket(clientID, username, password string) []byte {
	var b bytes.Buffer
	mqttString(&b, "MQTT")
	b.WriteByte(4)
	flags := byte(0x02 | 0x80)
	if password != "" {
		flags |= 0x40
	}
	b.WriteByte(flags)
	b.Write([]byte{0, 0})
	mqttString(&b, clientID)
	mqttString(&b, username)
	if password != "" {
		mqttString(&b, password)
	}
	return packet(0x10, b.Bytes())
}

// subscribePacket subscribes to filter at QoS qos.
func subscribePacket(id uint16, filter string, qos byte) []byte {
	var b bytes.Buffer
	_ = binary.Write(&b, binary.BigEndian, id)
	mqttString(&b, filter)
	b.WriteByte(qos)
	return packet(0x82, b.Bytes())
}

// publishPacket is a QoS 0 PUBLISH.
func publishPacket(topic string, payload []byte) []byte {
	var b bytes.Buffer
	mqttString(&b, topic)
	b.Write(payload)
	return packet(0x30, b.Bytes())
}

// readPacket reads one control packet: type nibble and body.
func readPacket(r *bufio.Reader) (byte, []byte, error) {
	first, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		d, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(d&0x7f) * mult
		mult *= 128
		if d&0x80 == 0 {
			break
		}
		if i == 3 {
			return 0, nil, errors.New("bad remaining length")
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return first >> 4, body, nil
}

// publishTopic returns the topic and payload of a QoS 0/1 PUBLISH body.
func publishTopic(flags byte, body []byte) (string, []byte, error) {
	if len(body) < 2 {
		return "", nil, errors.New("short publish")
	}
	n := int(binary.BigEndian.Uint16(body))
	if len(body) < 2+n {
		return "", nil, errors.New("short publish topic")
	}
	topic, rest := string(body[2:2+n]), body[2+n:]
	if (flags>>1)&3 > 0 {
		if len(rest) < 2 {
			return "", nil, errors.New("short publish id")
		}
		rest = rest[2:]
	}
	return topic, rest, nil
}

// readPublish reads packets until a PUBLISH and returns its topic and payload.
func readPublish(r *bufio.Reader) (string, []byte, error) {
	for {
		first, err := r.Peek(1)
		if err != nil {
			return "", nil, err
		}
		flags := first[0] & 0x0f
		typ, body, err := readPacket(r)
		if err != nil {
			return "", nil, err
		}
		if typ == 3 {
			return publishTopic(flags, body)
		}
	}
}

// statusOf returns the HTTP status of a response topic, or 0.
func statusOf(topic string) int {
	const prefix = "$dps/registrations/res/"
	if len(topic) < len(prefix)+3 || topic[:len(prefix)] != prefix {
		return 0
	}
	n, err := strconv.Atoi(topic[len(prefix) : len(prefix)+3])
	if err != nil {
		return 0
	}
	return n
}
