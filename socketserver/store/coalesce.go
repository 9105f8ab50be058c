package store

import (
	"context"
	"sync"
	"time"
)

// AckCoalescer writes the ACKs of many devices together: one AckMany per
// batch instead of one store round trip per ACK, which under uniform
// traffic (each device acking a message or two at a time) was half of the
// store's work per delivered message. An ACK not yet written only means a
// possible re-delivery, never a loss; Flush writes a device's ACK before
// its session is released, so that another server resuming it reads it.
//
// A batch is written when it holds MaxBatch devices, Delay after its first
// ACK, or at once when a Flush waits for it. One batch is written at a
// time; ACKs that arrive meanwhile fill the next one.
type AckCoalescer struct {
	st       Store
	maxBatch int
	delay    time.Duration
	timeout  time.Duration
	written  func(n int) // observes each write's number of devices; may be nil

	mu     sync.Mutex
	next   *ackBatch // filling
	flying *ackBatch // being written; nil if none
	hurry  bool      // write next without waiting for the delay
	closed bool
	kick   chan struct{} // cap 1: next got its first ACK, or hurry was set
	done   chan struct{} // closed when the writer has stopped
}

type ackBatch struct {
	acks    []DeviceAck
	results []func(error)
	index   map[string]int // device → its place in acks
	written chan struct{}  // closed once written and its results called
}

func newAckBatch(n int) *ackBatch {
	return &ackBatch{index: make(map[string]int, n), written: make(chan struct{})}
}

// NewAckCoalescer writes ACKs to st in batches of at most maxBatch
// devices, at most delay after the first, each write bounded by timeout;
// written, when not nil, is told each write's number of devices.
func NewAckCoalescer(st Store, maxBatch int, delay, timeout time.Duration, written func(n int)) *AckCoalescer {
	a := &AckCoalescer{st: st, maxBatch: max(maxBatch, 1), delay: delay, timeout: timeout, written: written,
		next: newAckBatch(0), kick: make(chan struct{}, 1), done: make(chan struct{})}
	go a.run()
	return a
}

// Ack queues a cumulative ACK. A later ACK of the device (a newer epoch,
// or a higher seq in the same epoch) replaces one not yet written, whose
// result is then never called; result, when not nil, gets what the store
// answered for the written one (ErrFenced, ErrLost, a store error).
// It runs on the writer's goroutine and must not block. After Close the
// ACK is written at once, in the caller's goroutine.
func (a *AckCoalescer) Ack(device string, epoch, seq uint64, result func(error)) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
		err := a.st.AckMany(ctx, []DeviceAck{{Device: device, Epoch: epoch, Seq: seq}})[0]
		cancel()
		if a.written != nil {
			a.written(1)
		}
		if result != nil {
			result(err)
		}
		return
	}
	b := a.next
	if i, ok := b.index[device]; ok {
		if old := b.acks[i]; epoch > old.Epoch || epoch == old.Epoch && seq > old.Seq {
			b.acks[i], b.results[i] = DeviceAck{Device: device, Epoch: epoch, Seq: seq}, result
		}
		a.mu.Unlock()
		return
	}
	b.index[device] = len(b.acks)
	b.acks = append(b.acks, DeviceAck{Device: device, Epoch: epoch, Seq: seq})
	b.results = append(b.results, result)
	if len(b.acks) >= a.maxBatch {
		a.hurry = true
	}
	if len(b.acks) == 1 || a.hurry {
		a.signal()
	}
	a.mu.Unlock()
}

// signal wakes the writer; a.mu is held.
func (a *AckCoalescer) signal() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Flush writes the device's queued ACK now, if it has one, and waits until
// it is written (each write is bounded by the timeout).
func (a *AckCoalescer) Flush(device string) {
	for {
		a.mu.Lock()
		var wait chan struct{}
		switch {
		case hasDevice(a.next, device):
			a.hurry = true
			a.signal()
			wait = a.next.written
		case a.flying != nil && hasDevice(a.flying, device):
			wait = a.flying.written
		}
		a.mu.Unlock()
		if wait == nil {
			return
		}
		<-wait // the device may have moved to the next batch: look again
	}
}

func hasDevice(b *ackBatch, device string) bool {
	_, ok := b.index[device]
	return ok
}

// Close writes every queued ACK and stops the writer; later ACKs are
// written one by one as they come.
func (a *AckCoalescer) Close() {
	a.mu.Lock()
	if !a.closed {
		a.closed = true
		a.hurry = true
		a.signal()
	}
	a.mu.Unlock()
	<-a.done
}

func (a *AckCoalescer) run() {
	defer close(a.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		<-a.kick
		a.mu.Lock()
		if len(a.next.acks) == 0 {
			closed := a.closed
			a.mu.Unlock()
			if closed {
				return
			}
			continue
		}
		if !a.hurry && !a.closed {
			// Let more ACKs join, until the delay ends or a kick hurries.
			a.mu.Unlock()
			timer.Reset(a.delay)
		wait:
			for {
				select {
				case <-timer.C:
					break wait
				case <-a.kick:
					a.mu.Lock()
					h := a.hurry
					a.mu.Unlock()
					if h {
						timer.Stop()
						break wait
					}
				}
			}
			a.mu.Lock()
		}
		b := a.next
		a.next, a.flying = b.split(a.maxBatch), b
		a.hurry = len(a.next.acks) >= a.maxBatch
		a.mu.Unlock()

		a.write(b)

		a.mu.Lock()
		a.flying = nil
		if len(a.next.acks) > 0 || a.closed {
			a.signal() // what came meanwhile waited for this write
		}
		a.mu.Unlock()
	}
}

// split cuts b to its first n devices and returns a batch of the rest
// (ACKs that came between the wake-up and the swap).
func (b *ackBatch) split(n int) *ackBatch {
	rest := newAckBatch(max(len(b.acks)-n, 0))
	for i := n; i < len(b.acks); i++ {
		d := b.acks[i].Device
		delete(b.index, d)
		rest.index[d] = len(rest.acks)
		rest.acks = append(rest.acks, b.acks[i])
		rest.results = append(rest.results, b.results[i])
	}
	if len(b.acks) > n {
		b.acks, b.results = b.acks[:n], b.results[:n]
	}
	return rest
}

func (a *AckCoalescer) write(b *ackBatch) {
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	errs := a.st.AckMany(ctx, b.acks)
	cancel()
	if a.written != nil {
		a.written(len(b.acks))
	}
	for i, f := range b.results {
		if f != nil {
			f(errs[i])
		}
	}
	close(b.written)
}
