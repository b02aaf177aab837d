package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/tpmdps/dpsd/device"
	"github.com/tpmdps/dpsd/internal/etcdtest"
	"github.com/tpmdps/dpsd/internal/testkit"
	"github.com/tpmdps/dpsd/internal/testkit/mqtttest"
)

func TestMain(m *testing.M) {
	// The cluster test runs etcd members as children: this binary again.
	etcdtest.RunChildIfAsked()
	os.Exit(m.Run())
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
	if !testkit.Poll(30*time.Second, func() bool {
		now = sample()
		return now.goroutines <= base.goroutines+40 && now.heap <= base.heap+64<<20
	}) {
		t.Fatalf("resources did not return to baseline: %v, baseline %v", now, base)
	}
	t.Logf("after the flood: %v (baseline %v)", now, base)
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

// readPublish reads packets until a PUBLISH and returns its topic and payload.
func readPublish(r *bufio.Reader) (string, []byte, error) {
	for {
		p, err := mqtttest.ReadPacket(r, mqtttest.V311)
		if err != nil {
			return "", nil, err
		}
		if p.Type() == packets.Publish {
			return p.TopicName, p.Payload, nil
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
