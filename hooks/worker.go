package hooks

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tpmdps/dpsd/provision"
)

// enqueue hands req to the session's worker, creating the queue and starting
// the worker at the connection's first request: most connections of a TPM
// device (the restricted challenge session) send one request, and idle ones
// none, so an idle connection costs no goroutine stack and no queue. It
// reports false when the queue is full or the worker has been stopped.
// Called only from the client's read goroutine.
func (h *Hook) enqueue(s *session, req request) bool {
	h.mu.Lock()
	if s.workerStopped {
		h.mu.Unlock()
		return false
	}
	q := s.queue
	if q == nil {
		q = make(chan request, h.limits.QueueLength)
		s.queue = q
		go h.work(s, q)
	}
	h.mu.Unlock()
	select {
	case q <- req:
		return true
	default:
		return false
	}
}

// stopWorker closes the session's queue, if a worker was started, so that it
// exits after the requests already queued; later enqueues fail. Idempotent.
func (h *Hook) stopWorker(s *session) {
	h.mu.Lock()
	q := s.queue
	stopped := s.workerStopped
	s.workerStopped = true
	h.mu.Unlock()
	if q != nil && !stopped {
		close(q)
	}
}

// work answers a connection's requests one at a time, in arrival order, and
// exits when stopWorker closes the queue.
func (h *Hook) work(s *session, queue <-chan request) {
	for req := range queue {
		if !s.cl.Closed() {
			h.answer(s, req)
		}
		h.done()
	}
}

// answer computes one response and writes it to the requesting client only.
func (h *Hook) answer(s *session, req request) {
	start := h.now()
	var resp provision.Response
	switch {
	case req.throttle > 0:
		resp = h.svc.ErrorResponse(provision.ErrorCodeThrottled, "Too many requests; retry later", req.trackingID, max(req.throttle, time.Second))
		h.reqLog(s, req).Warn("request throttled", "retryAfter", resp.RetryAfter)
	case req.topic.Kind == KindRegister:
		rr, err := provision.ParseRegisterRequest(req.body)
		if err != nil {
			if h.log.Enabled(h.ctx, slog.LevelInfo) {
				h.reqLog(s, req).Info("bad register body", "error", err)
			}
			resp = h.svc.ErrorResponse(provision.ErrorCodeBadRequest, "Invalid request body", req.trackingID, -1)
			break
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
		resp = h.svc.ErrorResponse(provision.ErrorCodeInternal, "Internal error; try again later", req.trackingID, time.Second)
	}
	body, err := provision.EncodeBody(resp.Body)
	if err != nil {
		h.reqLog(s, req).Error("encoding response", "error", err)
		resp = h.svc.ErrorResponse(provision.ErrorCodeInternal, "Internal error; try again later", req.trackingID, time.Second)
		if body, err = provision.EncodeBody(resp.Body); err != nil {
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
	if err := h.write(s, ResponseTopic(resp.Status, req.topic.RID, resp.RetryAfter), body); err != nil {
		if h.log.Enabled(h.ctx, slog.LevelInfo) {
			h.reqLog(s, req).Info("response not delivered", "status", resp.Status, "error", err)
		}
		return
	}
	if h.log.Enabled(h.ctx, slog.LevelInfo) {
		h.reqLog(s, req).Info("answered", "status", resp.Status, "elapsed", h.now().Sub(start))
	}
}

// reqLog is the logger of one request. It is built only when a record will
// be written: slog's With formats its attributes at once (about 1 % of the
// server's CPU per provisioning in a profile at --log-level warn).
func (h *Hook) reqLog(s *session, req request) *slog.Logger {
	return h.log.With("trackingId", req.trackingID, "registrationId", s.id.RegistrationID,
		"request", req.topic.Kind.String(), "connTrackingId", s.trackingID)
}

// errPacketID: the client has 65535 unacknowledged packets.
var errPacketID = errors.New("hooks: no packet id available")

// write publishes a response to the session's client alone (never through
// fan-out): QoS 1 when the client subscribed to ResponseFilter at QoS 1 or
// more, else QoS 0.
func (h *Hook) write(s *session, topic string, body []byte) error {
	var qos byte
	if sub, ok := s.cl.State.Subscriptions.Get(ResponseFilter); ok && sub.Qos > 0 {
		qos = 1
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic,
		Payload:     body,
	}
	if qos > 0 {
		id, err := s.cl.NextPacketID()
		if err != nil {
			return errors.Join(errPacketID, err)
		}
		pk.PacketID = uint16(id)
	}
	return s.cl.WritePacket(pk)
}
