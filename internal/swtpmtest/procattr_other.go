//go:build !linux

package swtpmtest

import "os/exec"

// killWithParent does nothing where there is no parent-death signal; the
// test's cleanup still kills swtpm.
func killWithParent(cmd *exec.Cmd) {}
