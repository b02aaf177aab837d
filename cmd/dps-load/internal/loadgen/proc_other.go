//go:build !linux

package loadgen

import (
	"errors"
	"time"
)

// errNoProc: process statistics are read from /proc, Linux only.
var errNoProc = errors.New("loadgen: process statistics need Linux /proc")

type procSample struct{ pid int }

func readProc(pid int) (procSample, error) { return procSample{}, errNoProc }

func readRSS(pid int) (int64, error) { return 0, errNoProc }

// ReadRSS returns the resident set size of process pid in KiB (Linux only).
func ReadRSS(pid int) (int64, error) { return readRSS(pid) }

func (s procSample) delta(e procSample, n int) *ProcessCPU { return nil }

func selfCPU() time.Duration { return 0 }

// RaiseFileLimit raises the open file limit (Linux only).
func RaiseFileLimit() (uint64, error) { return 0, errNoProc }
