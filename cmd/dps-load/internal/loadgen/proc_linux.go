//go:build linux

package loadgen

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat (USER_HZ,
// 100 on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// procSample is a process's CPU times and resident set size at one moment.
type procSample struct {
	pid       int
	user, sys time.Duration
	rssKiB    int64
}

// readProc reads /proc/<pid>/stat (utime, stime) and /proc/<pid>/status (VmRSS).
func readProc(pid int) (procSample, error) {
	s := procSample{pid: pid}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("loadgen: server process: %w", err)
	}
	// The command name is in parentheses and may contain spaces: fields
	// are counted after the last ')'. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return s, fmt.Errorf("loadgen: /proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return s, fmt.Errorf("loadgen: /proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return s, fmt.Errorf("loadgen: /proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	s.user, s.sys = time.Duration(ut)*clockTick, time.Duration(st)*clockTick
	s.rssKiB, err = readRSS(pid)
	return s, err
}

// readRSS returns VmRSS of /proc/<pid>/status in KiB.
func readRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("loadgen: server process: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("loadgen: /proc/%d/status VmRSS %q: %w", pid, v, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("loadgen: /proc/%d/status has no VmRSS", pid)
}

// ReadRSS returns the resident set size (VmRSS) of process pid in KiB.
func ReadRSS(pid int) (int64, error) { return readRSS(pid) }

// delta is the CPU spent between s and e, per provisioning of n.
func (s procSample) delta(e procSample, n int) *ProcessCPU {
	p := &ProcessCPU{PID: s.pid, UserMs: ms(e.user - s.user), SysMs: ms(e.sys - s.sys),
		RSSStartKiB: s.rssKiB, RSSEndKiB: e.rssKiB}
	if n > 0 {
		p.PerProvisioningMs = (p.UserMs + p.SysMs) / float64(n)
	}
	return p
}

// selfCPU is this process's user + system CPU time (getrusage).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// RaiseFileLimit raises this process's open file soft limit to its hard
// limit and returns the new soft limit (many connections need many fds).
func RaiseFileLimit() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("loadgen: getrlimit: %w", err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return 0, fmt.Errorf("loadgen: setrlimit: %w", err)
		}
	}
	return l.Cur, nil
}
