package socketserver

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

const (
	pumpPage    = 128
	goAwayGrace = 5 * time.Second
)

// session is a device's protocol state on its connection: the HELLO that
// welcomed it, the PUBLISH ids it stored, and the delivery cursor with the
// pump that reads the outbox when live delivery cannot keep up.
type session struct {
	c *conn

	// Set by the read loop during HELLO, before the session is registered;
	// read-only after. epoch 0: not welcomed (yet).
	device string
	epoch  uint64
	// pubHigh is the highest PUBLISH id stored for this session, to restore
	// it should the store lose the session.
	pubHigh atomic.Uint64
	// pubGap (read loop only) is the lowest PUBLISH id that failed to be
	// stored here. Later ids are refused until it is stored: recording one
	// of them would make its retransmit look like a duplicate, and be lost.
	pubGap uint64

	// mu guards the fields below; it is taken before the writer's lock,
	// so that the cursor moves with what is queued.
	mu      sync.Mutex
	behind  bool // the store may hold seqs > sent that are not queued
	pumping bool
	goaway  bool
	shed    bool   // picked by a Shed, which sends the GOAWAY
	sent    uint64 // highest seq queued for this device
	// The audit's view of the outbox: the ACK it last saw with messages
	// pending, and since when (zero: nothing pending).
	auditAcked   uint64
	pendingSince time.Time
}

// backlogAge records what an audit found for this device and returns how
// long its ACK has not moved while messages were pending: the oldest
// pending message is at least that old.
func (s *session) backlogAge(a store.AuditInfo, now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case a.Pending == 0:
		s.pendingSince = time.Time{}
		return 0
	case s.pendingSince.IsZero() || a.AckedSeq != s.auditAcked:
		s.pendingSince, s.auditAcked = now, a.AckedSeq
	}
	return now.Sub(s.pendingSince)
}

// frame handles one frame; false means the connection is finished.
func (s *session) frame(typ byte, body []byte, pendingAck *uint64) bool {
	c := s.c
	if s.epoch != 0 {
		c.lastRead.Store(time.Now().UnixNano())
		if typ == protocol.TypeAck {
			seq, err := protocol.ParseNumber(body)
			if err != nil {
				c.failErr(err)
				return false
			}
			*pendingAck = max(*pendingAck, seq)
			if c.tr.Buffered() {
				return true // a burst: apply only the highest ACK of it
			}
		}
		if *pendingAck != 0 {
			s.ack(*pendingAck)
			*pendingAck = 0
		}
		if typ == protocol.TypeAck || typ == protocol.TypeNone {
			return true
		}
	}
	if err := s.handle(typ, body); err != nil {
		c.failErr(err)
		return false
	}
	return true
}

func (s *session) handle(typ byte, body []byte) error {
	if s.epoch == 0 {
		switch typ {
		case protocol.TypeHello:
			// HELLO is deep work (JSON, JWT, store); see onFreshStack.
			return onFreshStack(func() error { return s.hello(body) })
		case protocol.TypePing:
			return s.ping(body)
		case protocol.TypeNone:
			return nil
		}
		return protocol.Errorf(protocol.CodeHelloRequired, "send HELLO first, not %s", protocol.TypeName(typ))
	}
	switch typ {
	case protocol.TypePing:
		return s.ping(body)
	case protocol.TypePong:
		return nil
	case protocol.TypePublish:
		return s.publish(body)
	case protocol.TypeHello:
		return protocol.Errorf(protocol.CodeBadFrame, "HELLO was already accepted on this connection")
	}
	return protocol.Errorf(protocol.CodeBadFrame, "%s is not sent by devices", protocol.TypeName(typ))
}

func (s *session) ping(body []byte) error {
	if len(body) > protocol.MaxPingBytes {
		return protocol.Errorf(protocol.CodeBadFrame, "PING body of %d bytes exceeds 64", len(body))
	}
	tr := s.c.tr
	s.c.w.write(func(dst []byte) []byte { return tr.AppendFrame(dst, protocol.TypePong, body) })
	return nil
}

func (s *session) hello(body []byte) error {
	c := s.c
	srv := c.srv
	start := time.Now()
	h, err := protocol.ParseHello(body)
	if err != nil {
		srv.metrics.hellos.WithLabelValues(string(protocol.CodeOf(err))).Inc()
		return err
	}
	if err := srv.auth.verify(h.Device, h.Token); err != nil {
		srv.metrics.hellos.WithLabelValues(string(protocol.CodeUnauthorized)).Inc()
		return protocol.Errorf(protocol.CodeUnauthorized, "%v", err)
	}
	if srv.goingAway.Load() {
		srv.metrics.hellos.WithLabelValues("goaway").Inc()
		s.goAway()
		return nil
	}
	if !srv.admit(h.Device) {
		srv.metrics.hellos.WithLabelValues("goaway").Inc()
		srv.metrics.shedRefused.Inc()
		s.goAway()
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), srv.cfg.StoreTimeout)
	sess, err := srv.store.Hello(ctx, h.Device, c.holder(), h.LastSeq)
	cancel()
	if err != nil {
		srv.metrics.hellos.WithLabelValues(string(protocol.CodeUnavailable)).Inc()
		if h.LastSeq > 0 {
			srv.metrics.resumeFails.WithLabelValues("unavailable").Inc()
		}
		srv.log.V(1).Info("hello failed: store unavailable", "device", h.Device, "err", err.Error())
		c.fail(protocol.CodeUnavailable, "session store unavailable; retry later", retryAfter(), ReasonRejected)
		// The HELLO may still have been applied (a timeout is an unknown
		// outcome): release it, or the device would look connected here.
		if !store.NotApplied(err) {
			srv.releaseFailed(h.Device, c.holder())
		}
		return nil
	}
	srv.metrics.hellos.WithLabelValues("accepted").Inc()
	if sess.Resumed {
		srv.metrics.resumes.Inc()
	} else if h.LastSeq > 0 {
		// The device had a session that the store no longer knows.
		srv.metrics.resumeFails.WithLabelValues("session_lost").Inc()
	}
	s.device, s.epoch = h.Device, sess.Epoch
	if w, ok := c.tr.(welcomer); ok {
		w.welcomed(h.Device, sess)
	}
	s.pubHigh.Store(sess.LastPublishID)
	c.tr.SetMaxFrame(srv.cfg.MaxFrameBytes)
	state := sess.State
	if len(state) == 0 {
		state = []byte("{}")
	}
	welcome := protocol.MustJSON(protocol.Welcome{Server: srv.cfg.ServerName, SessionEpoch: sess.Epoch,
		Resumed: sess.Resumed, HeartbeatMs: srv.cfg.HeartbeatInterval.Milliseconds(),
		LastPublishID: sess.LastPublishID, State: state})
	s.mu.Lock()
	s.sent = sess.AckedSeq
	s.behind = true
	// The heartbeat sweep watches lastRead from the registration on: set
	// first, or a sweep between the two finds the session silent since
	// 1970. A parked connection has no read in progress that a deadline
	// could end.
	c.lastRead.Store(time.Now().UnixNano())
	// Registered before the device can see its WELCOME (and send for it
	// at once): a message stored after the pump's first read would
	// otherwise find no session here and wait for the audit. Deliveries
	// wait for s.mu, so none goes out before the WELCOME.
	loser := srv.sessions.register(s)
	c.w.push(func(dst []byte) []byte { return c.tr.AppendFrame(dst, protocol.TypeWelcome, welcome) })
	s.kickLocked()
	s.mu.Unlock()
	srv.metrics.helloLatency.Observe(time.Since(start).Seconds())
	_ = c.nc.SetReadDeadline(time.Time{})
	if loser != nil {
		loser.takenOver()
	}
	// A drain that started while the store answered has not seen this connection.
	if srv.goingAway.Load() {
		s.goAway()
	}
	return nil
}

// ack queues a cumulative ACK: the server writes the ACKs of many devices
// together, and the connection writes its own before it releases the
// session (teardown), so a resume elsewhere reads it.
func (s *session) ack(seq uint64) {
	s.c.srv.acks.Ack(s.device, s.epoch, seq, func(err error) { s.acked(seq, err, true) })
	if _, ok := s.c.tr.(windowed); ok {
		s.kick() // the ACK freed room in the device's window
	}
}

// acked handles the store's answer to an ACK, on the ACK writer's
// goroutine: it must not block. ErrLost restores the session and writes
// the ACK once more.
func (s *session) acked(seq uint64, err error, reclaim bool) {
	srv := s.c.srv
	switch {
	case errors.Is(err, store.ErrLost) && reclaim:
		go func() {
			if s.c.socketClosed() {
				return // released: restoring it would make it look held here
			}
			if s.reclaim() {
				srv.acks.Ack(s.device, s.epoch, seq, func(err error) { s.acked(seq, err, false) })
			}
		}()
	case errors.Is(err, store.ErrFenced):
		s.takenOver()
	case err != nil:
		// Not stored only means a later re-delivery.
		srv.metrics.storeErrors.WithLabelValues("ack").Inc()
	default:
		srv.metrics.acks.Inc()
	}
}

func (s *session) publish(body []byte) error {
	srv := s.c.srv
	id, payload, err := protocol.ParseSeq(body)
	if err != nil {
		return err
	}
	if s.pubGap != 0 && id > s.pubGap {
		srv.metrics.publishes.WithLabelValues("failed").Inc()
		return nil // no PUBACK: the device retransmits it after the gap
	}
	// No per-call deadline on the per-message paths (ACK, PUBLISH): a
	// timer per message was a tenth of the server's CPU, and the store
	// bounds its own calls (Redis: pipelines under a store-timeout deadline).
	dup, err := srv.store.Publish(srv.ctx, s.device, s.epoch, id, payload)
	if errors.Is(err, store.ErrLost) && s.reclaim() {
		dup, err = srv.store.Publish(srv.ctx, s.device, s.epoch, id, payload)
	}
	switch {
	case errors.Is(err, store.ErrFenced):
		s.takenOver()
		return nil
	case err != nil:
		// No PUBACK: the device retransmits the same id.
		srv.metrics.publishes.WithLabelValues("failed").Inc()
		if s.pubGap == 0 || id < s.pubGap {
			s.pubGap = id
		}
		return nil
	case dup:
		srv.metrics.publishes.WithLabelValues("duplicate").Inc()
	default:
		srv.metrics.publishes.WithLabelValues("stored").Inc()
	}
	if id == s.pubGap {
		s.pubGap = 0
	}
	if !dup && id > s.pubHigh.Load() {
		s.pubHigh.Store(id)
	}
	tr := s.c.tr
	s.c.w.write(func(dst []byte) []byte { return tr.AppendSeqFrame(dst, protocol.TypePubAck, id, nil) })
	return nil
}

// reclaim restores this live connection's session after the store lost it,
// then re-reads the outbox: messages stored since then went to nobody.
// False means the connection is finished (taken over) or the store failed.
func (s *session) reclaim() bool {
	c := s.c
	srv := c.srv
	ctx, cancel := context.WithTimeout(srv.ctx, srv.cfg.StoreTimeout)
	err := srv.store.Reclaim(ctx, s.device, c.holder(), s.epoch, s.pubHigh.Load())
	cancel()
	switch {
	case errors.Is(err, store.ErrFenced):
		s.takenOver()
		return false
	case err != nil:
		srv.metrics.storeErrors.WithLabelValues("reclaim").Inc()
		return false
	}
	srv.metrics.reclaims.Inc()
	srv.log.Info("session lost by the store: restored", "device", s.device, "epoch", s.epoch)
	s.resync()
	return true
}

func (s *session) takenOver() {
	s.c.fail(protocol.CodeSessionTakenOver, "a newer connection of this device took the session", 0, ReasonTakenOver)
}

// deliver is called when a message for this device was stored. Live
// messages go out at once when they are next in line and the output queue
// has room; anything else is left to the pump, which reads the store.
func (s *session) deliver(seq uint64, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq <= s.sent {
		return
	}
	tr := s.c.tr
	if s.behind || s.pumping || seq != s.sent+1 || windowFree(tr) <= 0 ||
		!s.c.w.queue(func(dst []byte) []byte { return tr.AppendSeqFrame(dst, protocol.TypeDeliver, seq, payload) }, deliverBudget) {
		// Also when closing: then kickLocked starts no pump.
		s.behind = true
		s.kickLocked()
		return
	}
	s.sent = seq
	s.c.srv.metrics.deliveries.Inc()
}

// resync re-reads the outbox after notifications may have been lost.
func (s *session) resync() {
	s.mu.Lock()
	s.behind = true
	s.kickLocked()
	s.mu.Unlock()
}

// kick starts the pump if the session is behind and the output has room.
func (s *session) kick() {
	s.mu.Lock()
	s.kickLocked()
	s.mu.Unlock()
}

func (s *session) kickLocked() {
	if s.behind && !s.pumping && s.c.w.room() {
		s.pumping = true
		go s.pump()
	}
}

// pump moves stored messages with seq > sent into the output queue until it
// has caught up, the queue is full (the flusher restarts it) or the store
// fails (retried shortly).
func (s *session) pump() {
	c := s.c
	srv := c.srv
	for {
		s.mu.Lock()
		if !c.w.room() {
			s.pumping = false
			s.mu.Unlock()
			return
		}
		s.behind = false
		after := s.sent
		s.mu.Unlock()

		page := min(pumpPage, windowFree(c.tr))
		ctx, cancel := context.WithTimeout(context.Background(), srv.cfg.StoreTimeout)
		msgs, err := srv.store.Pending(ctx, s.device, after, page)
		cancel()

		s.mu.Lock()
		if err != nil {
			srv.metrics.storeErrors.WithLabelValues("pending").Inc()
			s.behind = true
			s.pumping = false
			s.mu.Unlock()
			time.AfterFunc(time.Second, s.resync)
			return
		}
		c.w.queue(func(dst []byte) []byte {
			for _, m := range msgs {
				if m.Seq > s.sent {
					dst = c.tr.AppendSeqFrame(dst, protocol.TypeDeliver, m.Seq, m.Payload)
					s.sent = m.Seq
					srv.metrics.deliveries.Inc()
				}
			}
			return dst
		}, 0)
		if len(msgs) < page && !s.behind {
			s.pumping = false
			s.mu.Unlock()
			return
		}
		s.behind = true
		s.mu.Unlock()
	}
}

// goAway asks the device to reconnect elsewhere, and closes the connection
// when it leaves or after a grace period.
// The drain calls it again for every session while it waits, so the
// already-sent check comes before any work.
// pickForShed marks s as picked by a Shed; false if a GOAWAY was sent or
// another Shed picked it.
func (s *session) pickForShed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.goaway || s.shed {
		return false
	}
	s.shed = true
	return true
}

// sentAway: a Shed picked s or it got GOAWAY; its device is leaving.
func (s *session) sentAway() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.goaway || s.shed
}

func (s *session) goAway() {
	c := s.c
	s.mu.Lock()
	if s.goaway {
		s.mu.Unlock()
		return
	}
	s.goaway = c.w.queue(func(dst []byte) []byte {
		jitter := int64(0)
		if j := c.srv.cfg.DrainJitter.Milliseconds(); j > 0 {
			jitter = rand.Int64N(j + 1)
		}
		body := protocol.MustJSON(protocol.GoAway{Reason: "draining", ReconnectAfterMs: jitter})
		return c.tr.AppendFrame(dst, protocol.TypeGoAway, body)
	}, 0)
	sent := s.goaway
	s.mu.Unlock()
	if !sent {
		return
	}
	c.srv.metrics.goaways.Inc()
	_, ow := c.tr.(oneWay)
	if _, ends := c.tr.(goAwayEnder); ow || ends {
		c.close(ReasonDrained) // the end of the stream is the cue to reconnect
		return
	}
	time.AfterFunc(goAwayGrace, func() { c.close(ReasonDrained) })
}
