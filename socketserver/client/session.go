package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// Reason says why a connection ended.
type Reason string

const (
	ReasonDialFailed Reason = "dial_failed"
	// ReasonHandshake: the connection ended or timed out before WELCOME;
	// Err is an *HTTPResponseError when the server answered with HTTP.
	ReasonHandshake Reason = "handshake_failed"
	ReasonGoAway    Reason = "goaway"
	// ReasonServerError: an ERROR frame; Event.Code says which.
	ReasonServerError Reason = "server_error"
	// ReasonServerSilent: no frame for 2.5 heartbeat intervals although we PING.
	ReasonServerSilent  Reason = "server_silent"
	ReasonConnLost      Reason = "connection_lost"
	ReasonProtocolError Reason = "protocolError"
	ReasonStopped       Reason = "stopped"
)

const (
	// ackBurst bounds how many deliveries go unacknowledged inside one long burst.
	ackBurst = 256
	// finalFlushTimeout bounds the last ACK written before a connection closes.
	finalFlushTimeout = time.Second
	defaultHeartbeat  = 15 * time.Second
)

type sessionEnd struct {
	reason   Reason
	code     protocol.Code
	err      error
	hint     time.Duration // server's reconnect_after_ms or retry_after_ms
	welcomed bool
}

// session is one connection. The Run goroutine reads; writeLoop writes.
type session struct {
	c          *Client
	nc         net.Conn
	tr         protocol.Codec
	first      *firstBytes // TCP only: the server's first bytes
	gen        uint64
	kick       chan struct{}
	stop       chan struct{}
	stopOnce   sync.Once
	writerDone chan struct{}

	// Guarded by c.mu.
	welcomed bool
	extra    []byte // frames queued by the reader: HELLO, PONGs
	ackSent  uint64
	hb       time.Duration
	nextPing time.Time
	writeErr error
}

func (s *session) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *session) shutdown() { s.stopOnce.Do(func() { close(s.stop) }) }

// connect runs one connection from dial to close.
func (c *Client) connect(ctx context.Context) sessionEnd {
	tok, err := c.token(ctx)
	if err != nil {
		return sessionEnd{reason: ReasonDialFailed, err: fmt.Errorf("token: %w", err)}
	}
	c.mu.Lock()
	c.gen++
	s := &session{c: c, gen: c.gen, kick: make(chan struct{}, 1), stop: make(chan struct{}), writerDone: make(chan struct{})}
	c.mu.Unlock()
	nc, tr, first, err := c.dial(ctx, s.queueWSPong)
	if err != nil {
		c.mu.Lock()
		c.stats.DialFailures++
		c.mu.Unlock()
		return sessionEnd{reason: ReasonDialFailed, err: err}
	}
	s.nc, s.tr, s.first = nc, tr, first

	c.mu.Lock()
	s.ackSent = c.lastSeq
	hello := protocol.Hello{Protocol: protocol.Version, Device: c.cfg.Device, Token: tok, LastSeq: c.lastSeq}
	s.extra = tr.AppendFrame(s.extra, protocol.TypeHello, protocol.MustJSON(hello))
	if first != nil {
		s.extra = tr.AppendFrame(s.extra, protocol.TypePing, httpProbe)
	}
	c.mu.Unlock()
	_ = nc.SetReadDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
	go s.writeLoop()
	s.wake()
	stopWatch := context.AfterFunc(ctx, s.shutdown)
	end := s.read(ctx)
	stopWatch()

	// Let the writer send the final ACK, then close.
	s.shutdown()
	select {
	case <-s.writerDone:
	case <-time.After(finalFlushTimeout):
	}
	_ = nc.Close()
	<-s.writerDone
	c.mu.Lock()
	if c.cur == s {
		c.cur = nil
	}
	c.mu.Unlock()
	return end
}

// read is the read loop: handshake, then frames until the connection ends.
func (s *session) read(ctx context.Context) sessionEnd {
	c := s.c
	silence := time.Duration(0)
	pendingAcks := 0
	for frames := 0; ; frames++ {
		typ, body, err := s.tr.ReadFrame()
		if err != nil {
			if frames == 0 && ctx.Err() == nil {
				if herr := c.httpAnswer(s.first); herr != nil {
					return sessionEnd{reason: ReasonHandshake, err: herr}
				}
			}
			return s.readFailed(ctx, err, silence != 0)
		}
		if silence != 0 {
			_ = s.nc.SetReadDeadline(time.Now().Add(silence))
		}
		switch typ {
		case protocol.TypeWelcome:
			if silence != 0 {
				return protocolError("second WELCOME", silence != 0)
			}
			var w protocol.Welcome
			if err := protocol.ParseJSON(body, &w); err != nil {
				return protocolError(err.Error(), false)
			}
			silence = s.welcome(w)
			_ = s.nc.SetReadDeadline(time.Now().Add(silence))
		case protocol.TypeDeliver:
			if silence == 0 {
				return protocolError("DELIVER before WELCOME", false)
			}
			seq, payload, err := protocol.ParseSeq(body)
			if err != nil {
				return protocolError(err.Error(), true)
			}
			if s.deliver(seq, payload) {
				pendingAcks++
			}
			if pendingAcks > 0 && (!s.tr.Buffered() || pendingAcks >= ackBurst) {
				pendingAcks = 0
				s.wake()
			}
		case protocol.TypePubAck:
			id, err := protocol.ParseNumber(body)
			if err != nil {
				return protocolError(err.Error(), silence != 0)
			}
			c.pubAcked(id)
		case protocol.TypePing:
			c.mu.Lock()
			s.extra = s.tr.AppendFrame(s.extra, protocol.TypePong, body)
			c.mu.Unlock()
			s.wake()
		case protocol.TypePong:
		case protocol.TypeGoAway:
			var g protocol.GoAway
			_ = protocol.ParseJSON(body, &g)
			return sessionEnd{reason: ReasonGoAway, hint: time.Duration(g.ReconnectAfterMs) * time.Millisecond,
				welcomed: silence != 0, err: fmt.Errorf("goaway: %s", g.Reason)}
		case protocol.TypeError:
			var e protocol.ErrorBody
			if err := protocol.ParseJSON(body, &e); err != nil {
				return protocolError(err.Error(), silence != 0)
			}
			se := &ServerError{Code: e.Code, Message: e.Message, RetryAfterMs: e.RetryAfterMs}
			return sessionEnd{reason: ReasonServerError, code: e.Code, err: se, welcomed: silence != 0,
				hint: time.Duration(e.RetryAfterMs) * time.Millisecond}
		default:
			return protocolError(protocol.TypeName(typ)+" is not sent by servers", silence != 0)
		}
	}
}

func protocolError(msg string, welcomed bool) sessionEnd {
	return sessionEnd{reason: ReasonProtocolError, err: errors.New(msg), welcomed: welcomed}
}

func (s *session) readFailed(ctx context.Context, err error, welcomed bool) sessionEnd {
	c := s.c
	c.mu.Lock()
	werr := s.writeErr
	c.mu.Unlock()
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		return sessionEnd{reason: ReasonStopped, err: ctx.Err(), welcomed: welcomed}
	case werr != nil:
		return sessionEnd{reason: ReasonConnLost, err: werr, welcomed: welcomed}
	case !welcomed:
		return sessionEnd{reason: ReasonHandshake, err: err}
	case errors.As(err, &ne) && ne.Timeout():
		return sessionEnd{reason: ReasonServerSilent, err: err, welcomed: true}
	}
	return sessionEnd{reason: ReasonConnLost, err: err, welcomed: true}
}

// welcome starts the session and returns how long the server may stay silent.
func (s *session) welcome(w protocol.Welcome) time.Duration {
	c := s.c
	now := time.Now()
	hb := time.Duration(w.HeartbeatMs) * time.Millisecond
	if hb <= 0 {
		hb = defaultHeartbeat
	}
	c.mu.Lock()
	if c.nextID == 0 {
		c.nextID = w.LastPublishID + 1
		close(c.welcomed)
	} else if c.nextID <= w.LastPublishID {
		// Another process of this device published meanwhile: its ids are taken.
		c.nextID = w.LastPublishID + 1
	}
	if c.stats.Connects > 0 {
		c.stats.Reconnects++
	}
	c.stats.Connects++
	if w.Resumed {
		c.stats.Resumes++
	}
	c.stats.LastWelcome, c.stats.LastWelcomeAt = w, now
	s.welcomed, s.hb, s.nextPing = true, hb, now.Add(hb)
	c.cur = s
	c.mu.Unlock()
	s.wake() // retransmit what is unacknowledged
	c.log.V(1).Info("connected", "device", c.cfg.Device, "server", w.Server, "epoch", w.SessionEpoch, "resumed", w.Resumed)
	if c.cfg.OnState != nil {
		c.cfg.OnState(w.State)
	}
	c.emit(Event{Type: EventConnected, At: now, Welcome: w})
	return hb * 5 / 2
}

// deliver hands a message to the application unless it is a duplicate.
func (s *session) deliver(seq uint64, payload []byte) bool {
	c := s.c
	c.mu.Lock()
	dup := seq <= c.lastSeq
	if dup {
		c.stats.Duplicates++
	}
	c.mu.Unlock()
	if dup {
		return false
	}
	if c.cfg.OnMessage != nil {
		c.cfg.OnMessage(seq, payload)
	}
	c.mu.Lock()
	c.lastSeq = seq
	c.stats.LastSeq = seq
	c.stats.Delivered++
	c.mu.Unlock()
	return true
}

func (s *session) queueWSPong(payload []byte) {
	s.c.mu.Lock()
	s.extra = appendWSPong(s.extra, payload)
	s.c.mu.Unlock()
	s.wake()
}

// writeLoop is the only writer of the connection. It wakes on a kick, on
// its timer (PING, PUBLISH retransmit) and on stop, when it writes the last
// ACK and closes the connection.
func (s *session) writeLoop() {
	defer close(s.writerDone)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var buf []byte
	for {
		final := false
		select {
		case <-s.kick:
		case <-timer.C:
		case <-s.stop:
			final = true
		}
		now := time.Now()
		var next time.Time
		buf, next = s.collect(buf[:0], now, final)
		if len(buf) > 0 {
			timeout := s.c.cfg.WriteTimeout
			if final {
				timeout = finalFlushTimeout
			}
			_ = s.nc.SetWriteDeadline(now.Add(timeout))
			if _, err := s.nc.Write(buf); err != nil {
				s.c.mu.Lock()
				s.writeErr = err
				s.c.mu.Unlock()
				_ = s.nc.Close()
				return
			}
		}
		if final {
			_ = s.nc.Close()
			return
		}
		if !next.IsZero() {
			timer.Reset(next.Sub(now))
		}
	}
}

// collect builds what is due now and returns when the writer must wake next.
func (s *session) collect(buf []byte, now time.Time, final bool) ([]byte, time.Time) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	buf = append(buf, s.extra...)
	s.extra = s.extra[:0]
	if !s.welcomed {
		return buf, time.Time{}
	}
	if c.lastSeq > s.ackSent {
		buf = s.tr.AppendSeqFrame(buf, protocol.TypeAck, c.lastSeq, nil)
		s.ackSent = c.lastSeq
	}
	if final {
		return buf, time.Time{}
	}
	if !now.Before(s.nextPing) {
		buf = s.tr.AppendFrame(buf, protocol.TypePing, nil)
		s.nextPing = now.Add(s.hb)
	}
	next := s.nextPing
	for _, p := range c.inflight {
		if p.gen != s.gen || !now.Before(p.sentAt.Add(c.cfg.PubAckTimeout)) {
			if !p.sentAt.IsZero() {
				c.stats.Retransmits++
			}
			buf = s.tr.AppendSeqFrame(buf, protocol.TypePublish, p.id, p.payload)
			p.gen, p.sentAt = s.gen, now
		}
		if d := p.sentAt.Add(c.cfg.PubAckTimeout); d.Before(next) {
			next = d
		}
	}
	return buf, next
}
