package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/provision"
)

// request is one device request waiting for its answer.
type request struct {
	topic      RequestTopic
	body       []byte
	trackingID string
	ackID      uint16        // packet id to acknowledge (QoS 1), 0 for QoS 0
	throttle   time.Duration // > 0: answer 429 with this retry-after
	// notTPMRegister: on a restricted session, a request other than a
	// register with tpm (set for a poll in OnPublish, for a register once
	// answer has read its body); the session is closed once it is answered.
	notTPMRegister bool
}

// answer computes one response and writes it, preceded by the request's
// PUBACK, to the requesting client only. It runs on the client's read
// goroutine (OnPacketProcessed), so a connection's requests are answered one
// at a time in arrival order, and a client pipelining requests waits in its
// own socket buffer instead of in a queue of ours.
func (h *Hook) answer(s *session, req request) {
	start := h.now()
	var resp provision.Response
	if req.throttle == 0 && h.cluster != nil {
		var unavailable bool
		req.throttle, unavailable = h.clusterThrottle(s, req)
		if unavailable {
			resp = provision.NewErrorResponse(provision.ErrorCodeUnavailable, "Service unavailable; try again later", req.trackingID, time.Second, h.now())
			h.reqLog(s, req).Error("cluster rate limit unavailable: request refused")
		}
	}
	switch {
	case resp.Status != 0:
	case req.throttle > 0:
		resp = provision.NewErrorResponse(provision.ErrorCodeThrottled, "Too many requests; retry later", req.trackingID, max(req.throttle, time.Second), h.now())
		h.reqLog(s, req).Warn("request throttled", "retryAfter", resp.RetryAfter)
	case req.topic.Kind == KindRegister:
		rr, err := provision.ParseRegisterRequest(req.body)
		if err != nil {
			if h.log.Enabled(h.ctx, slog.LevelInfo) {
				h.reqLog(s, req).Info("bad register body", "error", err)
			}
			resp = provision.NewErrorResponse(provision.ErrorCodeBadRequest, "Invalid request body", req.trackingID, -1, h.now())
			req.notTPMRegister = s.restricted()
			break
		}
		if s.restricted() {
			if rr.TPM == nil {
				req.notTPMRegister = true
			} else {
				h.restrictedActive(s)
			}
		}
		ctx, cancel := context.WithTimeout(h.ctx, h.limits.RequestTimeout)
		resp = h.svc.Register(ctx, s.id, rr, req.trackingID)
		cancel()
	default:
		ctx, cancel := context.WithTimeout(h.ctx, h.limits.RequestTimeout)
		resp = h.svc.Poll(ctx, s.id, req.topic.OperationID, req.trackingID)
		cancel()
	}
	if resp.Status < 200 || resp.Status > 599 || resp.Body == nil {
		h.reqLog(s, req).Error("service returned an invalid response", "status", resp.Status)
		resp = provision.NewErrorResponse(provision.ErrorCodeInternal, "Internal error; try again later", req.trackingID, time.Second, h.now())
	}
	body, err := provision.EncodeBody(resp.Body)
	if err != nil {
		h.reqLog(s, req).Error("encoding response", "error", err)
		resp = provision.NewErrorResponse(provision.ErrorCodeInternal, "Internal error; try again later", req.trackingID, time.Second, h.now())
		if body, err = provision.EncodeBody(resp.Body); err != nil {
			h.closeFor(s.cl, err)
			return
		}
	}
	phase := PhasePoll
	if req.topic.Kind == KindRegister {
		phase = PhaseRegister
		if s.restricted() {
			phase = PhaseChallenge
		}
	}
	h.observe(phase, resp.Status, start)
	if err := h.write(s, req.ackID, ResponseTopic(resp.Status, req.topic.RID, resp.RetryAfter), body); err != nil {
		if h.log.Enabled(h.ctx, slog.LevelInfo) {
			h.reqLog(s, req).Info("response not delivered", "status", resp.Status, "error", err)
		}
		// Neither PUBACK nor answer reached the client, or only part of
		// them (a write that timed out leaves the stream cut mid-packet):
		// the connection is of no further use. This is also how a client
		// that stops reading is dropped, after the write timeout.
		h.closeFor(s.cl, err)
		return
	}
	if h.log.Enabled(h.ctx, slog.LevelInfo) {
		h.reqLog(s, req).Info("answered", "status", resp.Status, "elapsed", h.now().Sub(start))
	}
	if req.notTPMRegister {
		// A restricted session exists for the TPM challenge alone: a poll
		// or any other register gets its answer (401, 400) and the session
		// ends, so that it cannot be kept alive without asking for challenges.
		h.closeFor(s.cl, ErrNotTPMRegister, "trackingId", req.trackingID)
	}
}

// reqLog is the logger of one request. It is built only when a record will
// be written: slog's With formats its attributes at once (about 1 % of the
// server's CPU per provisioning in a profile at --log-level warn).
func (h *Hook) reqLog(s *session, req request) *slog.Logger {
	return h.log.With("trackingId", req.trackingID, "registrationId", s.id.RegistrationID,
		"request", req.topic.Kind.String(), "connTrackingId", s.trackingID)
}

// responseQoS is 1 when the client holds a subscription at QoS 1 or more
// (every one it holds lies within the response topics), else 0. Devices
// subscribe to ResponseFilter: one lookup, no copy of the subscriptions.
func responseQoS(cl *mqtt.Client) byte {
	if sub, ok := cl.State.Subscriptions.Get(ResponseFilter); ok {
		return min(sub.Qos, 1)
	}
	for _, sub := range cl.State.Subscriptions.GetAll() {
		if sub.Qos > 0 {
			return 1
		}
	}
	return 0
}

// errPacketID: the client has 65535 unacknowledged packets.
var errPacketID = errors.New("hooks: no packet id available")

// write sends the PUBACK of the request (ackID 0: it was QoS 0, no PUBACK)
// and the response in one write: PUBACK first, as a broker that
// acknowledged on receipt would order them ([MQTT-3.3.4-1]: a QoS 1
// PUBLISH is answered with a PUBACK with its packet id), then the response
// to the session's client alone (never through fan-out), at QoS 1 when the
// client subscribed (within the response topics) at QoS 1 or more, else QoS 0 (the
// lower of the message's QoS and the granted one: [MQTT-3.8.4-6] in 3.1.1,
// [MQTT-3.8.4-8] in MQTT 5). One write instead of two saves a system call
// and a wake-up on both sides per request; mochi is told not to acknowledge
// (OnPublish returns packets.ErrRejectPacket) so that the PUBACK is not sent
// twice. An answer larger than an MQTT 5 client's Maximum Packet Size is not
// sent (MQTT 5 [MQTT-3.1.2-24]); the error closes the connection instead of
// dropping just the answer ([MQTT-3.1.2-25]), since a device without its
// answer cannot go on.
func (h *Hook) write(s *session, ackID uint16, topic string, body []byte) error {
	cl := s.cl
	version := cl.Properties.ProtocolVersion
	var buf bytes.Buffer
	buf.Grow(len(topic) + len(body) + 16)
	if ackID != 0 {
		ack := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Puback},
			PacketID:        ackID,
			ProtocolVersion: version,
			ReasonCode:      packets.CodeSuccess.Code,
		}
		if err := ack.PubackEncode(&buf); err != nil {
			return fmt.Errorf("encoding PUBACK: %w", err)
		}
	}
	qos := responseQoS(cl)
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:       topic,
		Payload:         body,
		ProtocolVersion: version,
	}
	if qos > 0 {
		id, err := cl.NextPacketID()
		if err != nil {
			return errors.Join(errPacketID, err)
		}
		pk.PacketID = uint16(id)
	}
	start := buf.Len()
	if err := pk.PublishEncode(&buf); err != nil {
		return fmt.Errorf("encoding response: %w", err)
	}
	if limit := cl.Properties.Props.MaximumPacketSize; limit > 0 && uint32(buf.Len()-start) > limit {
		return fmt.Errorf("%w: response of %d bytes, client maximum %d", packets.ErrPacketTooLarge, buf.Len()-start, limit)
	}
	if cl.Closed() {
		return mqtt.ErrConnectionClosed
	}
	cl.Lock() // mochi's writers hold it too
	defer cl.Unlock()
	if _, err := cl.Net.Conn.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("writing response: %w", err)
	}
	return nil
}
