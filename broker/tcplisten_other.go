//go:build !linux

package broker

import "net"

// listenConfig leaves keep-alive to Go, which sets ka on every accepted
// connection: not every system copies the keep-alive options of a listening
// socket to the sockets it accepts.
func listenConfig(ka keepAlive) net.ListenConfig {
	return net.ListenConfig{KeepAliveConfig: net.KeepAliveConfig{
		Enable:   true,
		Idle:     ka.idle,
		Interval: ka.interval,
		Count:    ka.count,
	}}
}
