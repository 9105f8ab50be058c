package socketserver

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// httpFactory is the public HTTP listener (--ws-addr). The request head of
// each connection decides what it becomes: a WebSocket (GET /ws), an SSE
// stream (GET /sse), or a request of the SSE upstream (POST /sse/ack,
// POST /sse/publish, OPTIONS), handed to net/http. Device connections stay
// on the parked path; net/http serves only short requests.
type httpFactory struct{}

func (httpFactory) name() string { return "ws" }

// open is never called: upgrade returns the factory of each connection.
func (httpFactory) open(net.Conn, int, *writer) transport {
	panic("the HTTP listener opens no transport itself")
}

// maxRequestHead bounds a request head: a connection that is not welcomed
// costs little (section 6 of the contract).
const maxRequestHead = 8 << 10

// errAnswered ends a connection that got an HTTP error answer.
var errAnswered = errors.New("refused in HTTP")

func (httpFactory) upgrade(s *Server, nc net.Conn, _ func()) (transportFactory, error) {
	h, err := readRequestHead(nc)
	if err != nil {
		if errors.Is(err, errHeadTooLarge) {
			writeHTTPError(nc, protocol.CodeFrameTooLarge, "request head above 8 KiB", 0)
		}
		return nil, err
	}
	sse := !s.cfg.DisableSSE && (h.path == "/sse" || strings.HasPrefix(h.path, "/sse/"))
	switch {
	case h.path == "/ws" || sse && h.method == http.MethodGet && h.path == "/sse":
		// RFC 6455 (and an event stream) want nothing sent before the answer.
		if h.end != len(h.raw) {
			writeHTTPError(nc, protocol.CodeBadFrame, "data sent before the answer to the request", 0)
			return nil, errAnswered
		}
		if h.path == "/ws" {
			return wsFactory{}, upgradeWS(nc, h.raw)
		}
		return s.openSSE(nc, h.raw)
	case sse && s.sseUp != nil:
		s.sseUp.handoff(&replayConn{Conn: nc, head: bytes.NewReader(h.raw)})
		return nil, nil
	}
	writeHTTPStatus(nc, http.StatusNotFound, protocol.ErrorBody{Code: protocol.CodeBadFrame,
		Message: "not found: devices connect to /ws (WebSocket) or /sse (Server-Sent Events)"}, 0)
	return nil, errAnswered
}

// requestHead is what the HTTP listener read of a connection before it
// knew what the connection is: the head, raw[:end], and what followed.
type requestHead struct {
	raw          []byte
	end          int
	method, path string
}

var errHeadTooLarge = errors.New("request head too large")

func readRequestHead(nc net.Conn) (*requestHead, error) {
	buf := make([]byte, 0, 1024)
	for {
		if len(buf) == cap(buf) {
			if cap(buf) >= maxRequestHead {
				return nil, errHeadTooLarge
			}
			buf = append(buf, make([]byte, cap(buf))...)[:len(buf)]
		}
		n, err := nc.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if end := headEnd(buf); end > 0 {
			line, _, _ := bytes.Cut(buf, []byte("\n"))
			method, rest, _ := strings.Cut(strings.TrimRight(string(line), "\r"), " ")
			target, _, _ := strings.Cut(rest, " ")
			path, _, _ := strings.Cut(target, "?")
			return &requestHead{raw: buf, end: end, method: method, path: path}, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// headEnd is the length of the head in b (up to and including the empty
// line), 0 while it is incomplete. Bare line feeds are accepted, as by
// net/http.
func headEnd(b []byte) int {
	for i := 0; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		if i+1 < len(b) && b[i+1] == '\n' {
			return i + 2
		}
		if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
			return i + 3
		}
	}
	return 0
}

// replayConn is a connection whose first bytes were read already: reads
// return them first.
type replayConn struct {
	net.Conn
	head *bytes.Reader
}

func (c *replayConn) Read(p []byte) (int, error) {
	if c.head.Len() > 0 {
		return c.head.Read(p)
	}
	return c.Conn.Read(p)
}

// unwrap is the connection itself once its first bytes were read again,
// so that it can park (the poller needs the socket).
func unwrap(nc net.Conn) net.Conn {
	if rc, ok := nc.(*replayConn); ok && rc.head.Len() == 0 {
		return rc.Conn
	}
	return nc
}

// httpStatusOf is the HTTP status that answers an ERROR code before a
// stream starts, and for the SSE upstream.
func httpStatusOf(code protocol.Code) int {
	switch code {
	case protocol.CodeUnauthorized:
		return http.StatusUnauthorized
	case protocol.CodeUnavailable, protocol.CodeServerFull:
		return http.StatusServiceUnavailable
	case protocol.CodeSessionTakenOver:
		return http.StatusConflict
	case protocol.CodeFrameTooLarge:
		return http.StatusRequestEntityTooLarge
	case protocol.CodeInternal:
		return http.StatusInternalServerError
	case protocol.CodeHelloTimeout, protocol.CodeHeartbeatTimeout:
		return http.StatusRequestTimeout
	}
	return http.StatusBadRequest
}

// appendHTTPError appends a complete response carrying an ERROR body as
// JSON; the connection closes after it.
func appendHTTPError(dst []byte, status int, body []byte, retryAfterMs int64) []byte {
	dst = fmt.Appendf(dst, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	if retryAfterMs > 0 {
		dst = fmt.Appendf(dst, "Retry-After: %d\r\n", (retryAfterMs+999)/1000)
	}
	dst = fmt.Appendf(dst, "Content-Type: application/json\r\nAccess-Control-Allow-Origin: *\r\n"+
		"Content-Length: %d\r\nConnection: close\r\n\r\n", len(body))
	return append(dst, body...)
}

func writeHTTPStatus(nc net.Conn, status int, e protocol.ErrorBody, retryAfterMs int64) {
	e.RetryAfterMs = retryAfterMs
	_, _ = nc.Write(appendHTTPError(nil, status, protocol.MustJSON(e), retryAfterMs))
}

func writeHTTPError(nc net.Conn, code protocol.Code, msg string, retryAfterMs int64) {
	writeHTTPStatus(nc, httpStatusOf(code), protocol.ErrorBody{Code: code, Message: msg}, retryAfterMs)
}

// connListener hands connections the HTTP listener read a head of to an
// http.Server, which then serves them (keep-alive included).
type connListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr: the connections come from the HTTP listener, whose address they carry.
func (l *connListener) Addr() net.Addr { return nil }

// push hands c over, or closes it once the listener is closed.
func (l *connListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		_ = c.Close()
	}
}

// parseUint parses a decimal query parameter; empty is 0 unless required.
func parseUint(v string, required bool) (uint64, bool) {
	if v == "" {
		return 0, !required
	}
	n, err := strconv.ParseUint(v, 10, 64)
	return n, err == nil
}
