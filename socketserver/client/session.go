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
	// ReasonServerSilent: no frame for 2.5 heartbeat intervals although we
	// PING (SSE: not even the stream's keepalive comment).
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
	link       link
	gen        uint64
	kick       chan struct{}
	stop       chan struct{}
	stopOnce   sync.Once
	writerDone chan struct{}

	// Guarded by c.mu.
	welcomed bool
	epoch    uint64 // the WELCOME's session_epoch
	extra    []byte // frames queued by the reader: HELLO, PONGs
	ackSent  uint64
	hb       time.Duration
	nextPing time.Time
	writeErr error
	// ended: the sender learnt why the session is over (SSE: a POST
	// answered session_taken_over); it ends the link, and the reader returns this.
	ended *sessionEnd
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
	s.ackSent = c.lastSeq
	hello := protocol.Hello{Protocol: protocol.Version, Device: c.cfg.Device, Token: tok, LastSeq: c.lastSeq}
	c.mu.Unlock()
	l, err := c.tr.dial(ctx, s, hello)
	if err != nil {
		c.mu.Lock()
		c.stats.DialFailures++
		c.mu.Unlock()
		return sessionEnd{reason: ReasonDialFailed, err: err}
	}
	s.link = l
	l.setReadDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
	go l.writeLoop(s)
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
	l.close()
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
		typ, body, err := s.link.readFrame()
		if err != nil {
			if frames == 0 && ctx.Err() == nil {
				if herr := s.link.firstReadFailed(err); herr != nil {
					return sessionEnd{reason: ReasonHandshake, err: herr}
				}
			}
			return s.readFailed(ctx, err, silence != 0)
		}
		if silence != 0 {
			s.link.setReadDeadline(time.Now().Add(silence))
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
			s.link.setReadDeadline(time.Now().Add(silence))
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
			if pendingAcks > 0 && (!s.link.buffered() || pendingAcks >= ackBurst) {
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
			s.link.pong(s, body)
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
	werr, ended := s.writeErr, s.ended
	c.mu.Unlock()
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		return sessionEnd{reason: ReasonStopped, err: ctx.Err(), welcomed: welcomed}
	case ended != nil:
		return *ended
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
	s.welcomed, s.epoch, s.hb, s.nextPing = true, w.SessionEpoch, hb, now.Add(hb)
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
		if c.callbacks != nil {
			c.callbacks.Lock()
			c.cfg.OnMessage(seq, payload)
			c.callbacks.Unlock()
		} else {
			c.cfg.OnMessage(seq, payload)
		}
	}
	c.mu.Lock()
	c.lastSeq = seq
	c.stats.LastSeq = seq
	c.stats.Delivered++
	c.mu.Unlock()
	return true
}
