package socketserver

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// CloseReason says why a connection ended; it labels metrics and logs.
type CloseReason string

const (
	ReasonClientClosed  CloseReason = "client_closed"
	ReasonProtocolError CloseReason = "protocol_error"
	ReasonTimeout       CloseReason = "timeout"
	ReasonTakenOver     CloseReason = "taken_over"
	ReasonDrained       CloseReason = "drained"
	ReasonSlowConsumer  CloseReason = "slow_consumer"
	ReasonWriteError    CloseReason = "write_error"
	ReasonRejected      CloseReason = "rejected"
	ReasonShutdown      CloseReason = "shutdown"
)

const (
	// deliverBudget bounds how many output bytes may queue before live
	// deliveries stop being buffered; the rest stays in the store and the
	// pump fetches it once the device has read what it was sent.
	deliverBudget = 64 << 10
	// hardBudget bounds the output queue whatever it holds: a device that
	// lets this much pile up is not reading and gets disconnected.
	hardBudget = 1 << 20
	pumpPage   = 128
	// spareMax is the largest output buffer a connection keeps for reuse.
	spareMax = 4 << 10
	// finalFlushTimeout bounds the last write (ERROR) before closing, and so
	// how long a taken-over connection may linger.
	finalFlushTimeout = time.Second
	goAwayGrace       = 5 * time.Second
)

// conn is one device connection. The read loop owns reading and all
// request handling; the flusher is the only goroutine that writes to the
// socket and runs only while output is queued; the pump fetches stored
// messages when live delivery cannot keep up. An idle welcomed connection
// is parked with the poller: it holds no goroutine and no buffer.
type conn struct {
	srv *Server
	nc  net.Conn
	tr  transport

	// id tells this connection from earlier ones of its device on this
	// server, in the store (Holder.Conn).
	id uint64
	// Set by the read loop before the connection is registered; read-only after.
	device string
	epoch  uint64
	// pubHigh is the highest PUBLISH id stored for this session, to restore
	// it should the store lose the session.
	pubHigh atomic.Uint64
	// pubGap (read loop only) is the lowest PUBLISH id that failed to be
	// stored here. Later ids are refused until it is stored: recording one
	// of them would make its retransmit look like a duplicate, and be lost.
	pubGap uint64

	mu        sync.Mutex
	out       []byte
	spare     []byte
	flushing  bool
	closing   bool // no more output except what is queued
	reason    CloseReason
	sent      uint64 // highest seq queued for this device
	behind    bool   // the store may hold seqs > sent that are not queued
	pumping   bool
	goaway    bool
	closed    chan struct{}
	closeOnce sync.Once

	// state is running while a read loop goroutine exists, parked while
	// the poller waits for input; the swap parked->running starts a loop.
	state  atomic.Int32
	pollID uint64          // set by the read loop before the first park
	raw    syscall.RawConn // with pollID
	// lastRead (unix ns) is when the welcomed device last sent a frame.
	lastRead atomic.Int64
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{srv: s, nc: nc, id: s.connIDs.Add(1), closed: make(chan struct{})}
}

func (c *conn) holder() store.Holder { return store.Holder{Server: c.srv.cfg.ServerName, Conn: c.id} }

// serve runs a new connection: the read loop, which parks and resumes
// until the connection ends.
func (c *conn) serve(tr transport, full bool) {
	c.tr = tr
	c.srv.metrics.connections.WithLabelValues(tr.name()).Inc()
	if full {
		c.fail(protocol.CodeServerFull, "server is at its connection limit; try another", retryAfter(), ReasonRejected)
		c.teardown()
		return
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.HelloTimeout))
	c.readLoop()
}

// readLoop reads and handles frames. Once the device is welcomed and its
// input is drained, the loop hands the connection to the poller and
// returns; unpark starts it again when bytes arrive. It tears the
// connection down when reading ends.
func (c *conn) readLoop() {
	var pendingAck uint64
	for {
		typ, body, err := c.tr.ReadFrame()
		if err != nil {
			c.readFailed(err)
			break
		}
		if !c.frame(typ, body, &pendingAck) {
			break
		}
		if c.epoch != 0 && !c.tr.Buffered() && c.park() {
			return
		}
	}
	c.teardown()
}

// frame handles one frame; false means the connection is finished.
func (c *conn) frame(typ byte, body []byte, pendingAck *uint64) bool {
	if c.epoch != 0 {
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
			if !c.ack(*pendingAck) {
				return false
			}
			*pendingAck = 0
		}
		if typ == protocol.TypeAck {
			return true
		}
	}
	if err := c.handle(typ, body); err != nil {
		c.failErr(err)
		return false
	}
	return true
}

const (
	running int32 = iota
	parked
)

// parkAfter is how long a drained read loop waits for more input before
// it parks the connection.
const parkAfter = 250 * time.Millisecond

// park hands a connection that stayed silent for parkAfter to the poller;
// true means the read loop must return (a wake-up or a close starts it
// again).
func (c *conn) park() bool {
	p := c.srv.poller
	if p == nil || c.pollID == 0 && !c.enroll(p) || p.wait(c, parkAfter) {
		return false
	}
	c.tr.Release()
	c.state.Store(parked)
	if p.arm(c) {
		return true
	}
	// Not armed: keep reading here, unless a close already restarted the loop.
	return !c.state.CompareAndSwap(parked, running)
}

// enroll gives c to the poller before its first park; false: its transport
// or socket cannot park, and c keeps its read goroutine.
func (c *conn) enroll(p *poller) bool {
	pk, ok := c.tr.(parker)
	if !ok {
		return false
	}
	rc, ok := pk.rawConn(c.nc)
	if !ok {
		return false
	}
	c.raw = rc
	p.add(c)
	return true
}

// unpark restarts the read loop of a parked connection: input arrived or
// the connection is closing.
func (c *conn) unpark() {
	if c.state.CompareAndSwap(parked, running) {
		go c.readLoop()
	}
}

func (c *conn) readFailed(err error) {
	var pe *protocol.Error
	var ne net.Error
	switch {
	case errors.As(err, &pe):
		c.failErr(pe)
	case errors.As(err, &ne) && ne.Timeout():
		// Only the hello timeout is a read deadline; heartbeats are swept.
		c.fail(protocol.CodeHelloTimeout, "no HELLO within the hello timeout", 0, ReasonTimeout)
	default:
		c.close(ReasonClientClosed)
	}
}

func (c *conn) handle(typ byte, body []byte) error {
	if c.epoch == 0 {
		switch typ {
		case protocol.TypeHello:
			// HELLO is deep work (JSON, JWT, store); see onFreshStack.
			return onFreshStack(func() error { return c.hello(body) })
		case protocol.TypePing:
			return c.ping(body)
		}
		return protocol.Errorf(protocol.CodeHelloRequired, "send HELLO first, not %s", protocol.TypeName(typ))
	}
	switch typ {
	case protocol.TypePing:
		return c.ping(body)
	case protocol.TypePong:
		return nil
	case protocol.TypePublish:
		return c.publish(body)
	case protocol.TypeHello:
		return protocol.Errorf(protocol.CodeBadFrame, "HELLO was already accepted on this connection")
	}
	return protocol.Errorf(protocol.CodeBadFrame, "%s is not sent by devices", protocol.TypeName(typ))
}

func (c *conn) ping(body []byte) error {
	if len(body) > protocol.MaxPingBytes {
		return protocol.Errorf(protocol.CodeBadFrame, "PING body of %d bytes exceeds 64", len(body))
	}
	c.write(func(dst []byte) []byte { return c.tr.AppendFrame(dst, protocol.TypePong, body) })
	return nil
}

func (c *conn) hello(body []byte) error {
	s := c.srv
	h, err := protocol.ParseHello(body)
	if err != nil {
		s.metrics.hellos.WithLabelValues(string(protocol.CodeOf(err))).Inc()
		return err
	}
	if err := s.auth.verify(h.Device, h.Token); err != nil {
		s.metrics.hellos.WithLabelValues(string(protocol.CodeUnauthorized)).Inc()
		return protocol.Errorf(protocol.CodeUnauthorized, "%v", err)
	}
	if s.draining.Load() {
		s.metrics.hellos.WithLabelValues("goaway").Inc()
		c.goAway()
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StoreTimeout)
	sess, err := s.store.Hello(ctx, h.Device, c.holder(), h.LastSeq)
	cancel()
	if err != nil {
		s.metrics.hellos.WithLabelValues(string(protocol.CodeUnavailable)).Inc()
		s.log.V(1).Info("hello failed: store unavailable", "device", h.Device, "err", err.Error())
		c.fail(protocol.CodeUnavailable, "session store unavailable; retry later", retryAfter(), ReasonRejected)
		// The HELLO may still have been applied (a timeout is an unknown
		// outcome): release it, or the device would look connected here.
		s.releaseFailed(h.Device, c.holder())
		return nil
	}
	s.metrics.hellos.WithLabelValues("accepted").Inc()
	if sess.Resumed {
		s.metrics.resumes.Inc()
	}
	c.device, c.epoch = h.Device, sess.Epoch
	c.pubHigh.Store(sess.LastPublishID)
	c.tr.SetMaxFrame(s.cfg.MaxFrameBytes)
	state := sess.State
	if len(state) == 0 {
		state = []byte("{}")
	}
	welcome := protocol.MustJSON(protocol.Welcome{Server: s.cfg.ServerName, SessionEpoch: sess.Epoch,
		Resumed: sess.Resumed, HeartbeatMs: s.cfg.HeartbeatInterval.Milliseconds(),
		LastPublishID: sess.LastPublishID, State: state})
	c.mu.Lock()
	c.sent = sess.AckedSeq
	c.behind = true
	c.out = c.tr.AppendFrame(c.out, protocol.TypeWelcome, welcome)
	c.startFlushLocked()
	c.kickLocked()
	c.mu.Unlock()
	// From here the heartbeat sweep watches lastRead; a parked connection
	// has no read in progress that a deadline could end.
	c.lastRead.Store(time.Now().UnixNano())
	_ = c.nc.SetReadDeadline(time.Time{})
	s.register(c)
	// A drain that started while the store answered has not seen this connection.
	if s.draining.Load() {
		c.goAway()
	}
	return nil
}

// ack applies a cumulative ACK; false means the connection is finished.
func (c *conn) ack(seq uint64) bool {
	s := c.srv
	err := s.store.Ack(s.ctx, c.device, c.epoch, seq) // bounded by the store, as in publish
	if errors.Is(err, store.ErrLost) && c.reclaim() {
		err = s.store.Ack(s.ctx, c.device, c.epoch, seq)
	}
	switch {
	case errors.Is(err, store.ErrFenced):
		c.takenOver()
		return false
	case err != nil:
		// Not stored only means a later re-delivery.
		s.metrics.storeErrors.WithLabelValues("ack").Inc()
	default:
		s.metrics.acks.Inc()
	}
	return true
}

func (c *conn) publish(body []byte) error {
	s := c.srv
	id, payload, err := protocol.ParseSeq(body)
	if err != nil {
		return err
	}
	if c.pubGap != 0 && id > c.pubGap {
		s.metrics.publishes.WithLabelValues("failed").Inc()
		return nil // no PUBACK: the device retransmits it after the gap
	}
	// No per-call deadline on the per-message paths (ACK, PUBLISH): a
	// timer per message was a tenth of the server's CPU, and the store
	// bounds its own calls (Redis: pipelines under a store-timeout deadline).
	dup, err := s.store.Publish(s.ctx, c.device, c.epoch, id, payload)
	if errors.Is(err, store.ErrLost) && c.reclaim() {
		dup, err = s.store.Publish(s.ctx, c.device, c.epoch, id, payload)
	}
	switch {
	case errors.Is(err, store.ErrFenced):
		c.takenOver()
		return nil
	case err != nil:
		// No PUBACK: the device retransmits the same id.
		s.metrics.publishes.WithLabelValues("failed").Inc()
		if c.pubGap == 0 || id < c.pubGap {
			c.pubGap = id
		}
		return nil
	case dup:
		s.metrics.publishes.WithLabelValues("duplicate").Inc()
	default:
		s.metrics.publishes.WithLabelValues("stored").Inc()
	}
	if id == c.pubGap {
		c.pubGap = 0
	}
	if !dup && id > c.pubHigh.Load() {
		c.pubHigh.Store(id)
	}
	c.write(func(dst []byte) []byte { return c.tr.AppendSeqFrame(dst, protocol.TypePubAck, id, nil) })
	return nil
}

// reclaim restores this live connection's session after the store lost it,
// then re-reads the outbox: messages stored since then went to nobody.
// False means the connection is finished (taken over) or the store failed.
func (c *conn) reclaim() bool {
	s := c.srv
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.StoreTimeout)
	err := s.store.Reclaim(ctx, c.device, c.holder(), c.epoch, c.pubHigh.Load())
	cancel()
	switch {
	case errors.Is(err, store.ErrFenced):
		c.takenOver()
		return false
	case err != nil:
		s.metrics.storeErrors.WithLabelValues("reclaim").Inc()
		return false
	}
	s.metrics.reclaims.Inc()
	s.log.Info("session lost by the store: restored", "device", c.device, "epoch", c.epoch)
	c.resync()
	return true
}

func (c *conn) takenOver() {
	c.fail(protocol.CodeSessionTakenOver, "a newer connection of this device took the session", 0, ReasonTakenOver)
}

// deliver is called when a message for this device was stored. Live
// messages go out at once when they are next in line and the output queue
// has room; anything else is left to the pump, which reads the store.
func (c *conn) deliver(seq uint64, payload []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing || seq <= c.sent {
		return
	}
	if c.behind || c.pumping || seq != c.sent+1 || len(c.out) >= deliverBudget {
		c.behind = true
		c.kickLocked()
		return
	}
	c.out = c.tr.AppendSeqFrame(c.out, protocol.TypeDeliver, seq, payload)
	c.sent = seq
	c.srv.metrics.deliveries.Inc()
	c.startFlushLocked()
}

// resync re-reads the outbox after notifications may have been lost.
func (c *conn) resync() {
	c.mu.Lock()
	c.behind = true
	c.kickLocked()
	c.mu.Unlock()
}

func (c *conn) kickLocked() {
	if c.behind && !c.pumping && !c.closing && len(c.out) < deliverBudget {
		c.pumping = true
		go c.pump()
	}
}

// pump moves stored messages with seq > sent into the output queue until it
// has caught up, the queue is full (the flusher restarts it) or the store
// fails (retried shortly).
func (c *conn) pump() {
	s := c.srv
	for {
		c.mu.Lock()
		if c.closing || len(c.out) >= deliverBudget {
			c.pumping = false
			c.mu.Unlock()
			return
		}
		c.behind = false
		after := c.sent
		c.mu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StoreTimeout)
		msgs, err := s.store.Pending(ctx, c.device, after, pumpPage)
		cancel()

		c.mu.Lock()
		if err != nil {
			s.metrics.storeErrors.WithLabelValues("pending").Inc()
			c.behind = true
			c.pumping = false
			c.mu.Unlock()
			time.AfterFunc(time.Second, c.resync)
			return
		}
		for _, m := range msgs {
			if m.Seq > c.sent && !c.closing {
				c.out = c.tr.AppendSeqFrame(c.out, protocol.TypeDeliver, m.Seq, m.Payload)
				c.sent = m.Seq
				s.metrics.deliveries.Inc()
			}
		}
		c.startFlushLocked()
		if len(msgs) < pumpPage && !c.behind {
			c.pumping = false
			c.mu.Unlock()
			return
		}
		c.behind = true
		c.mu.Unlock()
	}
}

// write queues a frame built by f, unless the connection is closing.
func (c *conn) write(f func([]byte) []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	c.out = f(c.out)
	if len(c.out) > hardBudget {
		c.closeLocked(ReasonSlowConsumer)
		return
	}
	c.startFlushLocked()
}

func (c *conn) startFlushLocked() {
	if !c.flushing && (len(c.out) > 0 || c.closing) {
		c.flushing = true
		go c.flush()
	}
}

// flush is the only code that writes to the socket. It exits when the queue
// is empty, so idle connections keep no writer goroutine.
func (c *conn) flush() {
	for {
		c.mu.Lock()
		if len(c.out) == 0 {
			c.flushing = false
			closing := c.closing
			c.kickLocked()
			c.mu.Unlock()
			if closing {
				c.closeSocket()
			}
			return
		}
		buf := c.out
		c.out = c.spare[:0]
		timeout := c.srv.cfg.WriteTimeout
		if c.closing {
			timeout = finalFlushTimeout
		}
		c.mu.Unlock()

		_ = c.nc.SetWriteDeadline(time.Now().Add(timeout))
		_, err := c.nc.Write(buf)

		c.mu.Lock()
		if cap(buf) <= spareMax {
			c.spare = buf[:0]
		} else {
			c.spare = nil // don't keep a burst's buffer on an idle connection
		}
		if err != nil {
			c.out = nil
			c.flushing = false
			c.closeLocked(ReasonWriteError)
			c.mu.Unlock()
			c.closeSocket()
			return
		}
		c.mu.Unlock()
	}
}

// fail sends ERROR and closes the connection right after it.
func (c *conn) fail(code protocol.Code, msg string, retryAfterMs int64, reason CloseReason) {
	c.srv.metrics.errors.WithLabelValues(string(code)).Inc()
	body := protocol.MustJSON(protocol.ErrorBody{Code: code, Message: msg, RetryAfterMs: retryAfterMs})
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	c.out = c.tr.AppendFrame(c.out, protocol.TypeError, body)
	c.out = c.tr.appendClose(c.out)
	c.closeLocked(reason)
}

func (c *conn) failErr(err error) {
	reason := ReasonProtocolError
	if protocol.CodeOf(err) == protocol.CodeInternal {
		c.srv.log.Error(err, "connection failed", "device", c.device)
	}
	c.fail(protocol.CodeOf(err), errMessage(err), 0, reason)
}

func errMessage(err error) string {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe.Message
	}
	return "internal error"
}

// goAway asks the device to reconnect elsewhere, and closes the connection
// when it leaves or after a grace period.
// The drain calls it again for every session while it waits, so the
// already-sent check comes before any work.
func (c *conn) goAway() {
	c.mu.Lock()
	if c.goaway || c.closing {
		c.mu.Unlock()
		return
	}
	c.goaway = true
	jitter := int64(0)
	if j := c.srv.cfg.DrainJitter.Milliseconds(); j > 0 {
		jitter = rand.Int64N(j + 1)
	}
	body := protocol.MustJSON(protocol.GoAway{Reason: "draining", ReconnectAfterMs: jitter})
	c.out = c.tr.AppendFrame(c.out, protocol.TypeGoAway, body)
	c.startFlushLocked()
	c.mu.Unlock()
	c.srv.metrics.goaways.Inc()
	time.AfterFunc(goAwayGrace, func() { c.close(ReasonDrained) })
}

// close ends the connection after flushing what is queued.
func (c *conn) close(reason CloseReason) {
	c.mu.Lock()
	c.closeLocked(reason)
	c.mu.Unlock()
}

func (c *conn) closeLocked(reason CloseReason) {
	if c.closing {
		return
	}
	c.closing = true
	c.reason = reason
	if len(c.out) > hardBudget {
		c.out = nil
	}
	if !c.flushing {
		c.flushing = true
		go c.flush()
	}
}

func (c *conn) closeSocket() {
	c.closeOnce.Do(func() {
		close(c.closed)
		_ = c.nc.Close()
		c.unpark() // a parked connection ends through its read loop
	})
}

// teardown runs when the read loop ends: let the final frames go out
// (bounded), then forget the session here and in the store.
func (c *conn) teardown() {
	s := c.srv
	defer s.wg.Done()
	defer s.metrics.connections.WithLabelValues(c.tr.name()).Dec()
	if s.poller != nil {
		defer s.poller.forget(c)
	}
	c.close(ReasonClientClosed)
	select {
	case <-c.closed:
	case <-time.After(finalFlushTimeout + 100*time.Millisecond):
	}
	c.closeSocket()
	c.mu.Lock()
	reason := c.reason
	c.mu.Unlock()
	s.metrics.closes.WithLabelValues(string(reason)).Inc()
	if c.epoch == 0 {
		s.untrack(c)
		return
	}
	s.unregister(c)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StoreTimeout)
	_ = s.store.Release(ctx, c.device, c.holder())
	cancel()
	s.untrack(c)
}

func retryAfter() int64 { return 1000 + rand.Int64N(2000) }
