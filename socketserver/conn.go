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

// CloseReason says why a connection ended; it labels metrics and logs. A
// byte rather than a string: every connection records one.
type CloseReason uint8

const (
	ReasonClientClosed CloseReason = iota
	ReasonProtocolError
	ReasonTimeout
	ReasonTakenOver
	ReasonDrained
	ReasonSlowConsumer
	ReasonWriteError
	ReasonRejected
	ReasonShutdown
)

var closeReasons = [...]string{
	ReasonClientClosed:  "client_closed",
	ReasonProtocolError: "protocol_error",
	ReasonTimeout:       "timeout",
	ReasonTakenOver:     "taken_over",
	ReasonDrained:       "drained",
	ReasonSlowConsumer:  "slow_consumer",
	ReasonWriteError:    "write_error",
	ReasonRejected:      "rejected",
	ReasonShutdown:      "shutdown",
}

func (r CloseReason) String() string { return closeReasons[r] }

// conn is one device connection: the socket and its life. The read loop
// owns reading and request handling and parks the connection when it is
// idle; the writer (w) owns the output and is alone in writing to the
// socket; the session (s) is the device's protocol state once it is
// welcomed. An idle welcomed connection is parked with the poller: it
// holds no goroutine and no buffer.
//
// A connection ends in steps: close stops the output after what is
// queued, with a reason (the writer records it); once that is written,
// closeSocket closes the socket, which ends the read loop, parked or not;
// the read loop then runs teardown, which forgets the session here and in
// the store.
type conn struct {
	srv *Server
	nc  net.Conn
	// tr is set when the connection starts serving, after any handshake
	// and before it can be registered; read-only after.
	tr transport
	// id tells this connection from earlier ones of its device on this
	// server, in the store (Holder.Conn).
	id uint64

	// state is running while a read loop goroutine exists, parked while
	// the poller waits for input; the swap parked->running starts a loop.
	state atomic.Int32
	// sockMu guards the end of the socket: sockClosed, and sockDone, made
	// only for a wait (teardown's): a channel per idle connection would
	// be 96 bytes of its heap.
	sockMu     sync.Mutex
	sockClosed bool
	sockDone   chan struct{}
	pollID     uint64          // set by the read loop before the first park
	raw        syscall.RawConn // with pollID
	// lastRead (unix ns) is when the welcomed device last sent a frame.
	lastRead atomic.Int64

	w writer
	s session
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{srv: s, nc: nc, id: s.connIDs.Add(1)}
	c.w.c = c
	c.s.c = c
	return c
}

func (c *conn) holder() store.Holder { return store.Holder{Server: c.srv.cfg.ServerName, Conn: c.id} }

// serve runs a new connection: the read loop, which parks and resumes
// until the connection ends.
func (c *conn) serve(tr transport, full bool) {
	c.tr = tr
	c.w.open(tr)
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
		prev := c.lastRead.Load()
		if err != nil {
			if pendingAck != 0 {
				// The burst's last ACK, before its end (a device that acks
				// and disconnects at once): not applying it would only mean
				// a re-delivery, but a needless one.
				c.s.ack(pendingAck)
			}
			c.readFailed(err)
			break
		}
		if !c.s.frame(typ, body, &pendingAck) {
			break
		}
		if c.s.epoch != 0 && !c.tr.Buffered() && c.park(parkDelay(time.Duration(c.lastRead.Load()-prev))) {
			return
		}
	}
	c.teardown()
}

const (
	running int32 = iota
	parked
)

// A drained read loop waits for more input before it parks the
// connection: parkAfter when the device is busy (its frame came within
// parkAfter of the one before), quietParkAfter after a lone frame (a
// HELLO, a heartbeat). A waiting goroutine costs its stack: a quarter of
// a second after each heartbeat and HELLO kept one for every device that
// had just sent one.
const (
	parkAfter      = 250 * time.Millisecond
	quietParkAfter = 20 * time.Millisecond
)

// parkDelay is how long to wait for input before parking, given the gap
// between the last frame and the one before it.
func parkDelay(gap time.Duration) time.Duration {
	if gap < parkAfter {
		return parkAfter
	}
	return quietParkAfter
}

// park hands a connection that stayed silent for wait to the poller; true
// means the read loop must return (a wake-up or a close starts it again).
func (c *conn) park(wait time.Duration) bool {
	p := c.srv.poller
	if p == nil || c.pollID == 0 && !c.enroll(p) || p.wait(c, wait) {
		return false
	}
	c.tr.Release()
	c.w.release()
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

// fail sends ERROR and closes the connection right after it.
func (c *conn) fail(code protocol.Code, msg string, retryAfterMs int64, reason CloseReason) {
	c.srv.metrics.errors.WithLabelValues(string(code)).Inc()
	body := protocol.MustJSON(protocol.ErrorBody{Code: code, Message: msg, RetryAfterMs: retryAfterMs})
	c.w.finish(func(dst []byte) []byte {
		return c.tr.appendClose(c.tr.AppendFrame(dst, protocol.TypeError, body))
	}, reason)
}

func (c *conn) failErr(err error) {
	reason := ReasonProtocolError
	if protocol.CodeOf(err) == protocol.CodeInternal {
		c.srv.log.Error(err, "connection failed", "device", c.s.device)
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

// close ends the connection after flushing what is queued.
func (c *conn) close(reason CloseReason) { c.w.close(reason) }

// closeSocket closes the socket once the writer is done with it.
func (c *conn) closeSocket() {
	c.sockMu.Lock()
	defer c.sockMu.Unlock()
	if c.sockClosed {
		return
	}
	c.sockClosed = true
	if c.sockDone != nil {
		close(c.sockDone)
	}
	_ = c.nc.Close()
	c.unpark() // a parked connection ends through its read loop
}

func (c *conn) socketClosed() bool {
	c.sockMu.Lock()
	defer c.sockMu.Unlock()
	return c.sockClosed
}

// awaitSocketClosed waits up to d for closeSocket.
func (c *conn) awaitSocketClosed(d time.Duration) {
	c.sockMu.Lock()
	if c.sockClosed {
		c.sockMu.Unlock()
		return
	}
	if c.sockDone == nil {
		c.sockDone = make(chan struct{})
	}
	done := c.sockDone
	c.sockMu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
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
	c.awaitSocketClosed(finalFlushTimeout + 100*time.Millisecond)
	c.closeSocket()
	s.metrics.closes.WithLabelValues(c.w.closeReason().String()).Inc()
	if c.s.epoch == 0 {
		s.untrack(c)
		return
	}
	s.sessions.unregister(&c.s)
	// The device's last ACK first: a server resuming it reads the cursor.
	s.acks.Flush(c.s.device)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StoreTimeout)
	_ = s.store.Release(ctx, c.s.device, c.holder())
	cancel()
	s.untrack(c)
}

func retryAfter() int64 { return 1000 + rand.Int64N(2000) }
