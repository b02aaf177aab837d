package broker

import (
	"context"
	"fmt"
	"net"
	"time"
)

// Keep-alive probing of accepted MQTT connections: Go's defaults for a
// net.ListenConfig with neither KeepAlive nor KeepAliveConfig set (see
// defaultTCPKeepAliveIdle, defaultTCPKeepAliveInterval and
// defaultTCPKeepAliveCount in the net package). A device that vanishes
// without a FIN is detected after idle + count*interval (2.5 min) even when
// it negotiated MQTT keep-alive 0.
const (
	keepAliveIdle     = 15 * time.Second
	keepAliveInterval = 15 * time.Second
	keepAliveCount    = 9
)

// keepAlive is the TCP keep-alive configuration of a listener's connections.
type keepAlive struct {
	idle, interval time.Duration
	count          int
}

// defaultKeepAlive is the configuration of every dpsd MQTT listener.
func defaultKeepAlive() keepAlive {
	return keepAlive{idle: keepAliveIdle, interval: keepAliveInterval, count: keepAliveCount}
}

// seconds rounds d up to whole seconds, as the kernel and package net do.
func seconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}

// Listen binds a TCP listener on addr the way dpsd binds its MQTT
// listeners: accepted connections have TCP keep-alive enabled with Go's
// default probing (idle 15 s, interval 15 s, 9 probes). On Linux the
// options are set once on the listening socket, whose accepted sockets
// inherit them, instead of with four system calls on every accepted
// connection; elsewhere Go sets them per connection. The load tool's bare
// broker binds with it too, so that its baseline pays the same costs.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	ln, err := listenKeepAlive(ctx, addr, defaultKeepAlive())
	if err != nil {
		return nil, fmt.Errorf("broker: listen on %q: %w", addr, err)
	}
	return ln, nil
}

// listenKeepAlive binds addr with keep-alive configuration ka.
func listenKeepAlive(ctx context.Context, addr string, ka keepAlive) (net.Listener, error) {
	lc := listenConfig(ka)
	return lc.Listen(ctx, "tcp", addr)
}
