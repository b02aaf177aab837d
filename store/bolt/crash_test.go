package bolt

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/storetest"
)

// Environment of the crash child: the test binary re-executed by
// TestCrashSafety runs crashChild instead of the tests.
const (
	envCrashDB     = "DPSD_STORE_CRASH_DB"
	envCrashPrefix = "DPSD_STORE_CRASH_PREFIX"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(envCrashDB); path != "" {
		os.Exit(crashChild(path, os.Getenv(envCrashPrefix)))
	}
	os.Exit(m.Run())
}

// crashChild writes from several goroutines until killed, printing one line
// per acknowledged write: "R id" (registration and its operation), "O id"
// (that operation replaced), "E id" (enrollment) or "G id" (group). It stops
// by itself after a minute in case its parent is gone.
func crashChild(path, prefix string) int {
	s, err := Open(path, Options{Timeout: 10 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out sync.Mutex
	ack := func(kind, id string) {
		out.Lock()
		defer out.Unlock()
		fmt.Fprintf(os.Stdout, "%s %s\n", kind, id) // unbuffered: one write per line
	}
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				id := fmt.Sprintf("%s-%d-%d", prefix, w, i)
				var err error
				switch i % 4 {
				case 0, 1:
					op := &store.Operation{ID: "op-" + id, RegistrationID: id, Status: store.RegistrationAssigning, ExpiresAt: time.Now().Add(time.Hour)}
					_, err = s.RecordRegistration(ctx, &store.Registration{RegistrationID: id, Status: store.RegistrationAssigned,
						EnrollmentGroupID: fmt.Sprint("g", w%2), HubKey: []byte(id)}, op)
					if err == nil {
						ack("R", id)
						op.Status = store.RegistrationAssigned
						op.ExpiresAt = time.Now().Add(2 * time.Hour) // moves its expiry entry
						if err = s.PutOperation(ctx, op); err == nil {
							ack("O", id)
						}
					}
				case 2:
					if _, err = s.PutEnrollment(ctx, storetest.FullEnrollment(id), ""); err == nil {
						ack("E", id)
					}
				case 3:
					if _, err = s.PutGroup(ctx, storetest.FullGroup(id), ""); err == nil {
						ack("G", id)
					}
				}
				if err != nil && ctx.Err() == nil {
					fmt.Fprintln(os.Stderr, "crash child:", err)
					os.Exit(3)
				}
			}
		}()
	}
	wg.Wait()
	return 0
}

// TestCrashSafety SIGKILLs a writer process at random moments, many rounds
// over one file: every acknowledged write survives and the file is consistent.
func TestCrashSafety(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 42))
	t.Logf("seed %d", seed)
	path := filepath.Join(t.TempDir(), "crash.db")
	acked := map[string][]string{} // kind -> ids
	const rounds = 20
	for round := range rounds {
		target := rng.IntN(300) // acknowledgements before the kill; 0: kill during startup
		if round == 0 {
			target = 1 + rng.IntN(300)
		}
		lines, stderr := runCrashChild(t, path, fmt.Sprint("r", round), target)
		for _, l := range lines {
			kind, id, ok := strings.Cut(l, " ")
			if !ok {
				t.Fatalf("round %d: bad child line %q (stderr %s)", round, l, stderr)
			}
			acked[kind] = append(acked[kind], id)
		}
		if len(lines) < target {
			t.Fatalf("round %d: child stopped after %d of %d acknowledgements: %s", round, len(lines), target, stderr)
		}
		verifyCrashFile(t, path, acked, round)
	}
	t.Logf("%d rounds, %d registrations, %d operation updates, %d enrollments, %d groups acknowledged and found",
		rounds, len(acked["R"]), len(acked["O"]), len(acked["E"]), len(acked["G"]))
	if len(acked["R"]) == 0 || len(acked["O"]) == 0 || len(acked["E"]) == 0 || len(acked["G"]) == 0 {
		t.Fatal("crash child acknowledged nothing")
	}
}

// runCrashChild starts the child, SIGKILLs it after target acknowledged
// lines, and returns every line it printed (all of them acknowledged).
func runCrashChild(t *testing.T, path, prefix string, target int) ([]string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envCrashDB+"="+path, envCrashPrefix+"="+prefix)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	kill := func() {
		if !killed {
			killed = true
			_ = cmd.Process.Signal(syscall.SIGKILL)
		}
	}
	t.Cleanup(kill)
	if target == 0 {
		kill()
	}
	var lines []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) >= target {
			kill()
		}
	}
	_ = cmd.Wait()
	return lines, stderr.String()
}

// verifyCrashFile reopens the file and checks every acknowledged write and
// the file's consistency.
func verifyCrashFile(t *testing.T, path string, acked map[string][]string, round int) {
	t.Helper()
	ctx := context.Background()
	s, err := Open(path, Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("round %d: reopen: %v", round, err)
	}
	defer s.Close()
	if err := s.Check(); err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	for _, id := range acked["R"] {
		r, err := s.GetRegistration(ctx, id)
		if err != nil || string(r.HubKey) != id {
			t.Fatalf("round %d: acknowledged registration %s: %v", round, id, err)
		}
		if _, err := s.GetOperation(ctx, "op-"+id); err != nil {
			t.Fatalf("round %d: operation of acknowledged registration %s: %v", round, id, err)
		}
	}
	for _, id := range acked["O"] {
		op, err := s.GetOperation(ctx, "op-"+id)
		if err != nil || op.Status != store.RegistrationAssigned {
			t.Fatalf("round %d: acknowledged operation update %s: %+v %v", round, id, op, err)
		}
	}
	for _, id := range acked["E"] {
		if _, err := s.GetEnrollment(ctx, id); err != nil {
			t.Fatalf("round %d: acknowledged enrollment %s: %v", round, id, err)
		}
	}
	for _, id := range acked["G"] {
		if _, err := s.GetGroup(ctx, id); err != nil {
			t.Fatalf("round %d: acknowledged group %s: %v", round, id, err)
		}
	}
}
