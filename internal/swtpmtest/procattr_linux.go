package swtpmtest

import (
	"os/exec"
	"syscall"
)

// killWithParent makes the kernel kill swtpm if the test process dies
// without running its cleanups (a panic or a test timeout).
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
