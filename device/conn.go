package device

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// response is one DPS answer received on the response topic.
type response struct {
	responseTopic
	Body []byte
}

// session is one MQTT connection to the broker, used for one request at a
// time. Answers are matched to requests by $rid.
type session struct {
	cfg    *resolved
	phase  Phase
	log    *slog.Logger
	client mqtt.Client

	responses chan response
	lost      chan struct{} // closed when the connection drops
	lostOnce  sync.Once
	lostErr   error // set before lost is closed

	nextRID int
}

// username builds "{idScope}/registrations/{regId}/api-version={v}&ClientVersion={agent}".
func username(cfg *resolved, regID string) string {
	return cfg.IDScope + "/registrations/" + regID + "/api-version=" + url.QueryEscape(cfg.APIVersion) +
		"&ClientVersion=" + url.QueryEscape(cfg.ClientVersion)
}

// connect opens an MQTT 3.1.1 connection as regID with creds and subscribes
// to the response filter. phase is PhaseConnect or PhaseReconnect, for errors.
func connect(ctx context.Context, cfg *resolved, phase Phase, regID string, creds Credentials) (*session, error) {
	s := &session{
		cfg:       cfg,
		phase:     phase,
		log:       cfg.Logger,
		responses: make(chan response, 8),
		lost:      make(chan struct{}),
	}
	tlsCfg := cfg.tls
	if tlsCfg != nil && creds.Certificate != nil {
		tlsCfg = tlsCfg.Clone()
		tlsCfg.Certificates = []tls.Certificate{*creds.Certificate}
	}

	// The connection is closed if ctx ends during the handshake, so that a
	// cancelled Provision never waits out ConnectTimeout.
	var (
		connMu  sync.Mutex
		conn    net.Conn
		stopped bool
	)
	stopWatch := context.AfterFunc(ctx, func() {
		connMu.Lock()
		defer connMu.Unlock()
		stopped = true
		if conn != nil {
			_ = conn.Close()
		}
	})
	openConn := func(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
		c, err := dialBroker(ctx, cfg, u, tlsCfg)
		if err != nil {
			return nil, err
		}
		connMu.Lock()
		defer connMu.Unlock()
		if stopped {
			_ = c.Close()
			return nil, ctx.Err()
		}
		conn = c
		return c, nil
	}

	scheme := "tcp"
	switch cfg.Transport {
	case TransportTLS:
		scheme = "tls"
	case TransportWebSocket:
		scheme = "wss"
	}
	brokerURL := &url.URL{Scheme: scheme, Host: cfg.addr}
	if cfg.Transport == TransportWebSocket {
		brokerURL.Path = WebSocketPath
	}
	opts := mqtt.NewClientOptions().
		AddBroker(brokerURL.String()).
		SetClientID(regID).
		SetUsername(username(cfg, regID)).
		SetProtocolVersion(4). // explicit: no silent fallback to 3.1
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetResumeSubs(false).
		SetKeepAlive(60 * time.Second).
		SetPingTimeout(10 * time.Second).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetWriteTimeout(cfg.ConnectTimeout).
		SetCustomOpenConnectionFn(openConn).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { s.markLost(err) })
	if creds.Password != "" {
		opts.SetPassword(creds.Password)
	}
	s.client = mqtt.NewClient(opts)

	s.log.Debug("connecting", "broker", brokerURL.String(), "clientId", regID,
		"username", username(cfg, regID), "password", creds.Password != "", "clientCert", creds.Certificate != nil)
	tok := s.client.Connect()
	<-tok.Done() // bounded by ConnectTimeout, and by ctx through stopWatch
	watching := stopWatch()
	if err := tok.Error(); err != nil || !watching {
		if ctx.Err() != nil {
			s.client.Disconnect(0)
			return nil, &Error{Phase: phase, Message: "connect cancelled", Err: ctx.Err()}
		}
		ct, _ := tok.(*mqtt.ConnectToken)
		if ct != nil && ct.ReturnCode() >= 1 && ct.ReturnCode() <= 5 {
			sentinel := ErrConnectRefused
			if ct.ReturnCode() == 3 { // [MQTT-3.2.2.3] server unavailable
				sentinel = ErrServerUnavailable
			}
			return nil, &Error{Phase: phase, Message: fmt.Sprintf("CONNACK return code %d", ct.ReturnCode()),
				Err: fmt.Errorf("%w: %w", sentinel, err)}
		}
		return nil, &Error{Phase: phase, Message: "connect to " + cfg.addr, Err: err}
	}
	s.log.Debug("connected", "phase", string(phase))

	st := s.client.Subscribe(ResponseFilter, 1, s.onMessage)
	if err := s.wait(ctx, st); err != nil {
		s.close()
		return nil, err
	}
	if sub, ok := st.(*mqtt.SubscribeToken); ok {
		if qos, ok := sub.Result()[ResponseFilter]; ok && qos == 0x80 {
			s.close()
			return nil, &Error{Phase: phase, Message: "subscription to " + ResponseFilter + " refused", Err: ErrProtocol}
		}
	}
	s.log.Debug("subscribed", "filter", ResponseFilter)
	return s, nil
}

// dialBroker opens the network connection for paho, honouring ctx.
func dialBroker(ctx context.Context, cfg *resolved, u *url.URL, tlsCfg *tls.Config) (net.Conn, error) {
	d := &net.Dialer{Timeout: cfg.ConnectTimeout}
	switch cfg.Transport {
	case TransportTCP:
		return d.DialContext(ctx, "tcp", cfg.addr)
	case TransportTLS:
		td := &tls.Dialer{NetDialer: d, Config: tlsCfg}
		return td.DialContext(ctx, "tcp", cfg.addr)
	default:
		return mqtt.NewWebsocket(u.String(), tlsCfg, cfg.ConnectTimeout, nil, nil)
	}
}

// markLost records why the connection dropped, once.
func (s *session) markLost(err error) {
	s.lostOnce.Do(func() {
		if err == nil {
			err = errors.New("closed by peer")
		}
		s.lostErr = err
		close(s.lost)
	})
}

// onMessage is paho's handler for the response filter. It never blocks: an
// answer nobody waits for (the buffer is full) is dropped.
func (s *session) onMessage(_ mqtt.Client, m mqtt.Message) {
	rt, err := parseResponseTopic(m.Topic())
	if err != nil {
		s.log.Warn("ignoring message", "err", err)
		return
	}
	select {
	case s.responses <- response{responseTopic: rt, Body: append([]byte(nil), m.Payload()...)}:
	default:
		s.log.Warn("dropping unexpected response", "rid", rt.RID, "status", rt.Status)
	}
}

// wait waits for a paho token, the connection's loss or ctx.
func (s *session) wait(ctx context.Context, tok mqtt.Token) error {
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return &Error{Phase: s.phase, Err: err}
		}
		return nil
	case <-s.lost:
		return &Error{Phase: s.phase, Err: fmt.Errorf("%w: %w", ErrConnectionLost, s.lostErr)}
	case <-ctx.Done():
		return &Error{Phase: s.phase, Err: ctx.Err()}
	}
}

// request publishes one request (QoS 1) on the topic topicFor(rid) builds and
// waits for the answer with the same $rid. phase labels errors.
func (s *session) request(ctx context.Context, phase Phase, topicFor func(rid string) string, body []byte) (response, error) {
	s.phase = phase
	s.nextRID++
	rid := strconv.Itoa(s.nextRID)
	topic := topicFor(rid)
	s.log.Debug("publish", "phase", string(phase), "topic", topic, "bytes", len(body))
	if err := s.wait(ctx, s.client.Publish(topic, 1, false, body)); err != nil {
		return response{}, err
	}
	for {
		select {
		case r := <-s.responses:
			if r.RID != rid {
				s.log.Debug("ignoring response for another request", "rid", r.RID, "want", rid)
				continue
			}
			s.log.Debug("response", "status", r.Status, "rid", r.RID, "retryAfter", r.RetryAfter, "bytes", len(r.Body))
			return r, nil
		case <-s.lost:
			return response{}, &Error{Phase: phase, Err: fmt.Errorf("%w: %w", ErrConnectionLost, s.lostErr)}
		case <-ctx.Done():
			return response{}, &Error{Phase: phase, Err: ctx.Err()}
		}
	}
}

// close disconnects cleanly (DISCONNECT, then close), waiting briefly.
func (s *session) close() {
	s.client.Disconnect(250)
	s.log.Debug("disconnected")
}
