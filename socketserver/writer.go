package socketserver

import (
	"math"
	"sync"
	"time"
)

const (
	// deliverBudget bounds how many output bytes may queue before live
	// deliveries stop being buffered; the rest stays in the store and the
	// pump fetches it once the device has read what it was sent.
	deliverBudget = 64 << 10
	// hardBudget bounds the output queue whatever it holds: a device that
	// lets this much pile up is not reading and gets disconnected.
	hardBudget = 1 << 20
	// spareMax is the largest output buffer a connection keeps for reuse.
	spareMax = 4 << 10
	// finalFlushTimeout bounds the last write (ERROR) before closing, and so
	// how long a taken-over connection may linger.
	finalFlushTimeout = time.Second
)

// writer is a connection's output: a queue of encoded frames and the
// flusher, the only goroutine that writes to the socket. The flusher runs
// only while output is queued, so an idle connection keeps no writer
// goroutine, and once parked no buffer at all.
//
// Frames are encoded into the queue by the callers' functions, under mu:
// the queue's order is the order of the calls. A caller that holds the
// session's lock may call in (session.mu, then writer.mu); the writer
// never calls the session with mu held.
type writer struct {
	c *conn

	mu       sync.Mutex // guards the fields below
	tr       transport  // set when the connection starts serving
	flushing bool
	closing  bool        // no more output except what is queued
	reason   CloseReason // why closing began
	out      []byte
	spare    []byte
}

// write queues a frame built by f, unless the connection is closing; a
// device that let hardBudget pile up is cut off.
func (w *writer) write(f func([]byte) []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closing {
		return
	}
	w.out = f(w.out)
	if len(w.out) > hardBudget {
		w.closeLocked(ReasonSlowConsumer)
		return
	}
	w.startLocked()
}

// queue queues the frames built by f unless the connection is closing or,
// with budget > 0, the queue holds budget bytes already; false: f was not
// called.
func (w *writer) queue(f func([]byte) []byte, budget int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closing || budget > 0 && len(w.out) >= budget {
		return false
	}
	w.out = f(w.out)
	w.startLocked()
	return true
}

// push queues the frame built by f even when the connection is closing:
// HELLO's WELCOME, which may still go out ahead of a close racing it.
func (w *writer) push(f func([]byte) []byte) {
	w.mu.Lock()
	w.out = f(w.out)
	w.startLocked()
	w.mu.Unlock()
}

// finish queues the last frames, built by f, and closes; nothing if the
// connection is closing already.
func (w *writer) finish(f func([]byte) []byte, reason CloseReason) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closing {
		return
	}
	w.out = f(w.out)
	w.closeLocked(reason)
}

// room reports whether stored messages may be queued: the connection is
// open and the queue is below deliverBudget.
func (w *writer) room() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.closing && len(w.out) < deliverBudget && windowFree(w.c.tr) > 0
}

// windowFree is how many deliveries tr may still send before an ACK.
func windowFree(tr transport) int {
	if wt, ok := tr.(windowed); ok {
		return wt.windowFree()
	}
	return math.MaxInt
}

// open makes tr the transport the output is encoded for.
func (w *writer) open(tr transport) {
	w.mu.Lock()
	w.tr = tr
	w.mu.Unlock()
}

// close stops the output after what is queued; the flusher then closes
// the socket. The first reason sticks.
func (w *writer) close(reason CloseReason) {
	w.mu.Lock()
	w.closeLocked(reason)
	w.mu.Unlock()
}

func (w *writer) closeLocked(reason CloseReason) {
	if w.closing {
		return
	}
	w.closing = true
	w.reason = reason
	if len(w.out) > hardBudget {
		w.out = nil
	}
	if e, ok := w.tr.(ender); ok {
		w.out = e.appendEnd(w.out)
	}
	if !w.flushing {
		w.flushing = true
		go w.flush()
	}
}

// release drops the spare buffer of a connection that parks: an idle
// connection's next frame may allocate one again.
func (w *writer) release() {
	w.mu.Lock()
	if !w.flushing && len(w.out) == 0 {
		w.out, w.spare = nil, nil
	}
	w.mu.Unlock()
}

func (w *writer) closeReason() CloseReason {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reason
}

func (w *writer) startLocked() {
	if !w.flushing && (len(w.out) > 0 || w.closing) {
		w.flushing = true
		go w.flush()
	}
}

// flush is the only code that writes to the socket. It exits when the queue
// is empty, so idle connections keep no writer goroutine; an open
// connection's session may then pump stored messages again.
func (w *writer) flush() {
	c := w.c
	for {
		w.mu.Lock()
		if len(w.out) == 0 {
			w.flushing = false
			closing := w.closing
			w.mu.Unlock()
			if closing {
				c.closeSocket()
			} else {
				c.s.kick()
			}
			return
		}
		buf := w.out
		w.out = w.spare[:0]
		fc, paced := w.tr.(flowControlled)
		timeout := c.srv.cfg.WriteTimeout
		if w.closing {
			timeout = finalFlushTimeout
		}
		w.mu.Unlock()

		deadline := time.Now().Add(timeout)
		_ = c.nc.SetWriteDeadline(deadline)
		var err error
		if paced {
			err = fc.writeFlow(c.nc, buf, deadline)
		} else {
			_, err = c.nc.Write(buf)
		}

		w.mu.Lock()
		if cap(buf) <= spareMax {
			w.spare = buf[:0]
		} else {
			w.spare = nil // don't keep a burst's buffer on an idle connection
		}
		if err != nil {
			w.out = nil
			w.flushing = false
			w.closeLocked(ReasonWriteError)
			w.mu.Unlock()
			c.closeSocket()
			return
		}
		w.mu.Unlock()
	}
}
