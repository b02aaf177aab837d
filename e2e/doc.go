// Package e2e holds the hardening tests of issue 9, which exercise the whole
// server rather than one package: floods on loopback against the in-process
// server (dpsdtest) with bounded goroutines and memory while real
// devices keep provisioning; crash safety with `dpsd serve` as a child process
// killed with SIGKILL at random moments; and a scan of a full run's debug
// logs for keys, tokens and blobs. It has no non-test code.
package e2e
