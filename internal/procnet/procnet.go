// Package procnet answers one question from Linux's /proc: which process
// listens on a TCP port. The load tool uses it to find the server whose CPU
// it measures, and tests to stop a daemon they started through a script.
package procnet

import "errors"

// ErrUnsupported: the answer is read from /proc, Linux only.
var ErrUnsupported = errors.New("procnet: needs Linux /proc")
