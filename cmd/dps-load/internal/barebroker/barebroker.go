// Package barebroker is the baseline of the load tool: the same MQTT
// library (mochi-mqtt) with the same capabilities and buffer sizes as the
// dpsd broker, but a trivial hook that accepts every CONNECT and answers
// every request on a DPS request topic at once with a fixed 200 body,
// written to the requesting client alone. No crypto, no store, no rate
// limits. Running the load tool's packet script against it measures the
// broker floor that provisioning costs are compared with.
package barebroker

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/broker"
)

// DefaultReplySize is the default size of every answer body: about a TPM
// challenge answer (a 766-byte blob in base64 plus JSON).
const DefaultReplySize = 1100

// requestPrefix starts every DPS request topic.
const requestPrefix = "$dps/registrations/"

// Config configures a bare broker. Empty addresses disable their listener.
type Config struct {
	// TCPAddr is the plain MQTT address, e.g. "127.0.0.1:0".
	TCPAddr string
	// TLSAddr is the MQTT over TLS address; needs TLSConfig.
	TLSAddr   string
	TLSConfig *tls.Config
	// ReplySize is the size of each answer body (default DefaultReplySize).
	ReplySize int
	// Logger receives mochi's errors (default: discarded).
	Logger *slog.Logger
}

// Broker is a running bare broker.
type Broker struct {
	srv      *mqtt.Server
	tcp, tls net.Addr
}

// Start binds the listeners and serves until Close.
func Start(ctx context.Context, cfg Config) (*Broker, error) {
	if cfg.TCPAddr == "" && cfg.TLSAddr == "" {
		return nil, errors.New("barebroker: no listener configured")
	}
	if cfg.TLSAddr != "" && cfg.TLSConfig == nil {
		return nil, errors.New("barebroker: TLSAddr needs TLSConfig")
	}
	if cfg.ReplySize <= 0 {
		cfg.ReplySize = DefaultReplySize
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The capabilities and buffers of broker.New.
	srv := mqtt.New(broker.MQTTOptions(broker.DefaultMaxPacketSize, log))
	if err := srv.AddHook(&replyHook{srv: srv, body: replyBody(cfg.ReplySize)}, nil); err != nil {
		return nil, fmt.Errorf("barebroker: adding hook: %w", err)
	}
	if err := broker.AddServerHooks(srv); err != nil {
		return nil, fmt.Errorf("barebroker: %w", err)
	}
	b := &Broker{srv: srv}
	var lns []net.Listener
	closeAll := func() {
		for _, l := range lns {
			_ = l.Close()
		}
	}
	if cfg.TCPAddr != "" {
		l, err := broker.Listen(ctx, cfg.TCPAddr)
		if err != nil {
			return nil, fmt.Errorf("barebroker: %w", err)
		}
		lns = append(lns, l)
		b.tcp = l.Addr()
		if err := srv.AddListener(listeners.NewNet("tcp", l)); err != nil {
			closeAll()
			return nil, fmt.Errorf("barebroker: %w", err)
		}
	}
	if cfg.TLSAddr != "" {
		l, err := broker.Listen(ctx, cfg.TLSAddr)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("barebroker: %w", err)
		}
		lns = append(lns, l)
		b.tls = l.Addr()
		if err := srv.AddListener(listeners.NewNet("tls", tls.NewListener(l, cfg.TLSConfig))); err != nil {
			closeAll()
			return nil, fmt.Errorf("barebroker: %w", err)
		}
	}
	if err := srv.Serve(); err != nil {
		closeAll()
		return nil, fmt.Errorf("barebroker: serve: %w", err)
	}
	return b, nil
}

// TCPAddr and TLSAddr are the bound addresses (nil when not configured).
func (b *Broker) TCPAddr() net.Addr { return b.tcp }

// TLSAddr is the bound MQTT over TLS address (nil when not configured).
func (b *Broker) TLSAddr() net.Addr { return b.tls }

// Close stops the broker and closes every connection.
func (b *Broker) Close() error { return b.srv.Close() }

// replyBody is a JSON body of exactly n bytes (at least its fixed part).
func replyBody(n int) []byte {
	const head, tail = `{"operationId":"bare","status":"assigned","pad":"`, `"}`
	pad := max(0, n-len(head)-len(tail))
	return []byte(head + strings.Repeat("x", pad) + tail)
}

// replyHook accepts everything and answers DPS requests at once.
type replyHook struct {
	mqtt.HookBase
	srv  *mqtt.Server
	body []byte
}

// ID names the hook.
func (h *replyHook) ID() string { return "bare-reply" }

// Provides declares the hooks used.
func (h *replyHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish}, []byte{b})
}

// OnConnectAuthenticate accepts every client.
func (h *replyHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// OnACLCheck allows every topic.
func (h *replyHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// OnPublish answers a request on a DPS topic to its sender only, with the
// request's $rid, and keeps the request from fan-out.
func (h *replyHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || !strings.HasPrefix(pk.TopicName, requestPrefix) {
		return pk, nil
	}
	rid := ""
	if _, q, ok := strings.Cut(pk.TopicName, "?"); ok {
		for _, kv := range strings.Split(q, "&") {
			if v, ok := strings.CutPrefix(kv, "$rid="); ok {
				rid = v
			}
		}
	}
	out := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   "$dps/registrations/res/200/?$rid=" + rid,
		Payload:     h.body,
	}
	if id, err := cl.NextPacketID(); err == nil {
		out.PacketID = uint16(id)
	} else {
		out.FixedHeader.Qos = 0
	}
	_ = cl.WritePacket(out)
	return pk, packets.CodeSuccessIgnore
}
