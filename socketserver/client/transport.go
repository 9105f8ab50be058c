package client

import (
	"context"
	"net"
	"strings"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// transport is how the client reaches the cluster, chosen once by the form
// of Config.Addr: "host:port" (TCP), "ws://…" or "wss://…" (WebSocket),
// "http://…/sse" or "https://…/sse" (Server-Sent Events), "grpc://…" or
// "grpcs://…" (scp.v1.Device/Connect), "mqtt://…" or "mqtts://…" (MQTT 5).
// Each transport is
// one file (transport_*.go).
type transport interface {
	// dial makes one connection for s and sends hello, or arranges for the
	// link's writer to send it. An error means no server was reached
	// (ReasonDialFailed); a server that was reached but did not start the
	// session answers through the link's first readFrame instead.
	dial(ctx context.Context, s *session, hello protocol.Hello) (link, error)
}

// link is one connection as a session sees it: the Run goroutine reads
// server frames from it, and its writeLoop is the only goroutine that
// sends. TCP and WebSocket carry frames both ways (streamLink); SSE turns
// the events of its stream into the same frames and sends ACK and PUBLISH
// as HTTP requests.
type link interface {
	// readFrame returns the server's next frame; body is valid until the next call.
	readFrame() (typ byte, body []byte, err error)
	// buffered reports whether more input is already read, so that a
	// burst of deliveries is acknowledged once, at its end.
	buffered() bool
	// setReadDeadline bounds the wait for the server's next bytes.
	setReadDeadline(t time.Time)
	// firstReadFailed turns a read failure before any frame into a more
	// telling error (an HTTP answer on a TCP port), or returns nil.
	firstReadFailed(err error) error
	// pong answers a PING frame of the server.
	pong(s *session, body []byte)
	// writeLoop is the session's only sender; it closes s.writerDone when
	// it returns, which it does soon after s.stop is closed (sending the
	// last ACK first) or the link fails.
	writeLoop(s *session)
	// close ends the connection: a blocked readFrame returns, and so does writeLoop.
	close()
}

// newTransport picks the transport of addr.
func newTransport(c *Client) transport {
	addr := c.cfg.Addr
	switch {
	case strings.HasPrefix(addr, "ws://") || strings.HasPrefix(addr, "wss://"):
		return wsTransport{c}
	case strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://"):
		return newSSETransport(c)
	case strings.HasPrefix(addr, "grpc://") || strings.HasPrefix(addr, "grpcs://"):
		return grpcTransport{c}
	case strings.HasPrefix(addr, "mqtt://") || strings.HasPrefix(addr, "mqtts://"):
		return mqttTransport{c}
	}
	return tcpTransport{c}
}

// readBufferSize is the read window of a TCP or WebSocket connection.
const readBufferSize = 4096

func (c *Client) netDial(ctx context.Context, network, addr string) (net.Conn, error) {
	if c.cfg.Dial != nil {
		return c.cfg.Dial(ctx, network, addr)
	}
	var d net.Dialer
	if c.cfg.LocalAddr != nil {
		d.LocalAddr = c.cfg.LocalAddr
	}
	return d.DialContext(ctx, network, addr)
}

// streamLink is a connection that carries frames both ways on one socket
// (TCP, WebSocket): writeLoop writes what collect builds.
type streamLink struct {
	nc    net.Conn
	codec protocol.Codec
	first *firstBytes // TCP only: the server's first bytes
}

func (l *streamLink) readFrame() (byte, []byte, error) { return l.codec.ReadFrame() }
func (l *streamLink) buffered() bool                   { return l.codec.Buffered() }
func (l *streamLink) setReadDeadline(t time.Time)      { _ = l.nc.SetReadDeadline(t) }
func (l *streamLink) close()                           { _ = l.nc.Close() }

func (l *streamLink) firstReadFailed(error) error {
	if l.first == nil {
		return nil
	}
	return l.first.httpAnswer()
}

func (l *streamLink) pong(s *session, body []byte) {
	s.c.mu.Lock()
	s.extra = l.codec.AppendFrame(s.extra, protocol.TypePong, body)
	s.c.mu.Unlock()
	s.wake()
}

// writeLoop is the only writer of the connection. It wakes on a kick, on
// its timer (PING, PUBLISH retransmit) and on stop, when it writes the last
// ACK and closes the connection.
func (l *streamLink) writeLoop(s *session) {
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
		buf, next = l.collect(s, buf[:0], now, final)
		if len(buf) > 0 {
			timeout := s.c.cfg.WriteTimeout
			if final {
				timeout = finalFlushTimeout
			}
			_ = l.nc.SetWriteDeadline(now.Add(timeout))
			if _, err := l.nc.Write(buf); err != nil {
				s.c.mu.Lock()
				s.writeErr = err
				s.c.mu.Unlock()
				_ = l.nc.Close()
				return
			}
		}
		if final {
			_ = l.nc.Close()
			return
		}
		if !next.IsZero() {
			timer.Reset(next.Sub(now))
		}
	}
}

// collect builds what is due now and returns when the writer must wake next.
func (l *streamLink) collect(s *session, buf []byte, now time.Time, final bool) ([]byte, time.Time) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	buf = append(buf, s.extra...)
	s.extra = s.extra[:0]
	if !s.welcomed {
		return buf, time.Time{}
	}
	if c.lastSeq > s.ackSent {
		buf = l.codec.AppendSeqFrame(buf, protocol.TypeAck, c.lastSeq, nil)
		s.ackSent = c.lastSeq
	}
	if final {
		return buf, time.Time{}
	}
	if !now.Before(s.nextPing) {
		buf = l.codec.AppendFrame(buf, protocol.TypePing, nil)
		s.nextPing = now.Add(s.hb)
	}
	next := s.nextPing
	for _, p := range c.inflight {
		if p.gen != s.gen || !now.Before(p.sentAt.Add(c.cfg.PubAckTimeout)) {
			if !p.sentAt.IsZero() {
				c.stats.Retransmits++
			}
			buf = l.codec.AppendSeqFrame(buf, protocol.TypePublish, p.id, p.payload)
			p.gen, p.sentAt = s.gen, now
		}
		if d := p.sentAt.Add(c.cfg.PubAckTimeout); d.Before(next) {
			next = d
		}
	}
	return buf, next
}
