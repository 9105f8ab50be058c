package socketserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// simDevice is a well-behaved device on raw TCP or gRPC: it resumes with last_seq,
// ACKs what it processed, honours GOAWAY hints and reconnects to another
// address. It records violations of the contract instead of failing, so
// that thousands can run at once.
type simDevice struct {
	name      string
	transport string          // "tcp" or "grpc"
	addrs     func() []string // candidate servers, tried in order from a random start

	mu         sync.Mutex
	last       uint64 // highest seq processed, in order
	acked      uint64 // highest seq ACKed to a server
	dups       int    // re-deliveries of unacked seqs (allowed)
	violations []string
	welcomes   int
	goaways    int
	takenOver  int
	connected  bool
	reconnects []time.Duration // time from losing a connection to the next WELCOME
}

func (d *simDevice) fail(format string, args ...any) {
	d.mu.Lock()
	d.violations = append(d.violations, fmt.Sprintf(d.name+": "+format, args...))
	d.mu.Unlock()
}

func (d *simDevice) state() (last uint64, connected bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last, d.connected
}

// run connects and reconnects until ctx ends.
func (d *simDevice) run(ctx context.Context) {
	var lost time.Time
	for ctx.Err() == nil {
		addrs := d.addrs()
		addr := addrs[rand.IntN(len(addrs))]
		wait, err := d.session(ctx, addr, &lost)
		if ctx.Err() != nil {
			return
		}
		if lost.IsZero() {
			lost = time.Now()
		}
		if wait == 0 {
			wait = time.Duration(50+rand.IntN(100)) * time.Millisecond
		}
		_ = err
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
	}
}

// session runs one connection; it returns how long to wait before the next.
func (d *simDevice) session(ctx context.Context, addr string, lost *time.Time) (time.Duration, error) {
	l, err := dialLink(d.transport, addr)
	if err != nil {
		return 0, err
	}
	defer l.close()
	stop := context.AfterFunc(ctx, l.close)
	defer stop()
	var wmu sync.Mutex
	write := func(b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return l.write(b)
	}
	last, _ := d.state()
	hello := protocol.MustJSON(protocol.Hello{Protocol: 1, Device: d.name, Token: token(d.name, time.Hour), LastSeq: last})
	if err := write(protocol.AppendFrame(nil, protocol.TypeHello, hello)); err != nil {
		return 0, err
	}
	pingCtx, stopPings := context.WithCancel(ctx)
	defer stopPings()
	go func() { // heartbeat
		for {
			select {
			case <-time.After(time.Second):
				_ = write(protocol.AppendFrame(nil, protocol.TypePing, nil))
			case <-pingCtx.Done():
				return
			}
		}
	}()
	var out []byte
	defer func() {
		d.mu.Lock()
		d.connected = false
		d.mu.Unlock()
	}()
	for {
		typ, body, err := l.read()
		if err != nil {
			return 0, err
		}
		out = out[:0]
		switch typ {
		case protocol.TypeWelcome:
			d.mu.Lock()
			d.welcomes++
			d.connected = true
			if !lost.IsZero() {
				d.reconnects = append(d.reconnects, time.Since(*lost))
				*lost = time.Time{}
			}
			d.mu.Unlock()
		case protocol.TypeDeliver:
			seq, _, err := protocol.ParseSeq(body)
			if err != nil {
				d.fail("bad DELIVER: %v", err)
				return 0, err
			}
			d.mu.Lock()
			switch {
			case seq == d.last+1 || d.last == 0: // a new outbox starts anywhere
				d.last = seq
			case seq <= d.last && seq > d.acked:
				d.dups++
			case seq <= d.acked:
				d.mu.Unlock()
				d.fail("re-delivery of acked seq %d (acked %d)", seq, d.acked)
				d.mu.Lock()
			default:
				gap := d.last
				d.mu.Unlock()
				d.fail("gap: got seq %d after %d", seq, gap)
				d.mu.Lock()
			}
			if !l.buffered() && d.last > d.acked {
				d.acked = d.last
				out = protocol.AppendSeqFrame(out, protocol.TypeAck, d.last, nil)
			}
			d.mu.Unlock()
		case protocol.TypeGoAway:
			var g protocol.GoAway
			_ = json.Unmarshal(body, &g)
			d.mu.Lock()
			d.goaways++
			d.mu.Unlock()
			if *lost = time.Now(); g.ReconnectAfterMs < 0 {
				d.fail("negative reconnect_after_ms")
			}
			return time.Duration(g.ReconnectAfterMs) * time.Millisecond, nil
		case protocol.TypeError:
			var e protocol.ErrorBody
			_ = json.Unmarshal(body, &e)
			switch e.Code {
			case protocol.CodeUnavailable:
			case protocol.CodeSessionTakenOver:
				// Legitimate when a HELLO of an abandoned connection of this
				// device was accepted late, on a slow machine; the message
				// invariants above still hold, which is what matters.
				d.mu.Lock()
				d.takenOver++
				d.mu.Unlock()
			default:
				d.fail("ERROR %s: %s", e.Code, e.Message)
			}
			return time.Duration(e.RetryAfterMs) * time.Millisecond, errors.New(string(e.Code))
		}
		if len(out) > 0 {
			if err := write(out); err != nil {
				return 0, err
			}
		}
	}
}

// link is a device's connection as simDevice sees it: frames as on TCP,
// whatever the transport.
type link interface {
	write(frames []byte) error // one or more length-prefixed frames
	read() (typ byte, body []byte, err error)
	buffered() bool
	close()
}

func dialLink(transport, addr string) (link, error) {
	if transport == "grpc" {
		return dialGRPCLink(addr)
	}
	nc, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	return tcpLink{nc, protocol.NewReader(nc, 1<<20, 4096)}, nil
}

type tcpLink struct {
	nc net.Conn
	r  *protocol.Reader
}

func (l tcpLink) write(b []byte) error {
	_ = l.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := l.nc.Write(b)
	return err
}

func (l tcpLink) read() (byte, []byte, error) {
	_ = l.nc.SetReadDeadline(time.Now().Add(15 * time.Second))
	return l.r.ReadFrame()
}

func (l tcpLink) buffered() bool { return l.r.Buffered() }
func (l tcpLink) close()         { _ = l.nc.Close() }
