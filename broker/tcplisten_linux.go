//go:build linux

package broker

import (
	"fmt"
	"net"
	"syscall"
)

// listenConfig sets keep-alive ka on the listening socket, before bind, and
// turns off Go's per-connection keep-alive setup: Linux copies SO_KEEPALIVE,
// TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT from a listening socket to
// the sockets it accepts (and arms their keep-alive timer), so every
// accepted connection gets the same probing without four setsockopt calls.
func listenConfig(ka keepAlive) net.ListenConfig {
	return net.ListenConfig{
		KeepAlive: -1,
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = setKeepAlive(int(fd), ka)
			})
			if err != nil {
				return fmt.Errorf("keep-alive on listening socket: %w", err)
			}
			return serr
		},
	}
}

// setKeepAlive enables keep-alive ka on socket fd.
func setKeepAlive(fd int, ka keepAlive) error {
	opts := []struct {
		name       string
		level, opt int
		value      int
	}{
		{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, seconds(ka.idle)},
		{"TCP_KEEPINTVL", syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, seconds(ka.interval)},
		{"TCP_KEEPCNT", syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, ka.count},
	}
	for _, o := range opts {
		if err := syscall.SetsockoptInt(fd, o.level, o.opt, o.value); err != nil {
			return fmt.Errorf("keep-alive on listening socket: setsockopt %s=%d: %w", o.name, o.value, err)
		}
	}
	return nil
}
