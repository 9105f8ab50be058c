package socketserver

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// sseFactory opens the event stream of one GET /sse: its request is the
// device's HELLO.
type sseFactory struct{ hello []byte }

func (sseFactory) name() string { return "sse" }

func (f sseFactory) open(nc net.Conn, _ int, _ *writer) transport {
	return &sseTransport{nc: nc, hello: f.hello}
}

// openSSE turns a GET /sse whose head the HTTP listener read into the
// HELLO its stream starts with.
func (s *Server) openSSE(nc net.Conn, head []byte) (transportFactory, error) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		writeHTTPError(nc, protocol.CodeBadFrame, "malformed request", 0)
		return nil, errAnswered
	}
	hello, err := s.sseHello(req)
	if err != nil {
		writeHTTPError(nc, protocol.CodeOf(err), errMessage(err), 0)
		return nil, errAnswered
	}
	// A dead peer never answers the keepalives: the kernel ends the
	// connection once written data stays unacknowledged this long.
	setUserTimeout(nc, s.cfg.HeartbeatTimeout)
	return sseFactory{hello}, nil
}

// sseHello is the HELLO of a GET /sse (section "Server-Sent Events" of
// docs/protocol.md). The session then runs as on the other transports:
// the HELLO is checked there, and its WELCOME or ERROR is what starts the
// HTTP response.
func (s *Server) sseHello(req *http.Request) ([]byte, error) {
	q := req.URL.Query()
	token := requestToken(req)
	device := q.Get("device")
	if device == "" {
		device = subjectOf(token)
	}
	lastSeq, ok1 := parseUint(q.Get("last_seq"), false)
	lastID, ok2 := parseUint(strings.TrimSpace(req.Header.Get("Last-Event-ID")), false)
	if !ok1 || !ok2 {
		return nil, protocol.Errorf(protocol.CodeBadFrame, "last_seq and Last-Event-ID must be decimal seqs")
	}
	if device == "" {
		return nil, protocol.Errorf(protocol.CodeBadFrame, "the device parameter is required (or a token whose sub names it)")
	}
	return protocol.MustJSON(protocol.Hello{Protocol: protocol.Version, Device: device,
		Token: token, LastSeq: max(lastSeq, lastID)}), nil
}

// serveHijackedSSE serves a GET /sse that came on a kept-alive connection
// of the upstream (browsers reuse those): net/http lets go of it, and it
// becomes a device connection like one the listener accepted.
func (s *Server) serveHijackedSSE(w http.ResponseWriter, req *http.Request) {
	hello, err := s.sseHello(req)
	if err != nil {
		sseError(w, err, 0)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		sseError(w, protocol.Errorf(protocol.CodeInternal, "cannot take the connection over"), 0)
		return
	}
	nc, rw, err := hj.Hijack()
	if err != nil {
		return
	}
	if rw.Reader.Buffered() > 0 {
		writeHTTPError(nc, protocol.CodeBadFrame, "data sent before the answer to the request", 0)
		_ = nc.Close()
		return
	}
	nc = unwrap(nc)
	_ = nc.SetDeadline(time.Time{})
	setUserTimeout(nc, s.cfg.HeartbeatTimeout)
	c := newConn(s, nc)
	full, ok := s.track(c)
	if !ok {
		_ = nc.Close()
		return
	}
	c.serve(sseFactory{hello}.open(nc, 0, &c.w), full)
}

// requestToken is the bearer token of r: the Authorization header or, for
// EventSource, which cannot set headers, the token query parameter.
func requestToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if t, ok := strings.CutPrefix(h, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
		return ""
	}
	return r.URL.Query().Get("token")
}

// sseTransport writes protocol frames as events of a text/event-stream
// response. The device sends nothing on it: its first "frame" is the
// HELLO of its request, then anything it sends is read and ignored.
type sseTransport struct {
	nc    net.Conn
	hello []byte // read loop: returned by the first ReadFrame
	// started (writer only): the response head is written.
	started bool
}

func (*sseTransport) name() string { return "sse" }

func (t *sseTransport) ReadFrame() (byte, []byte, error) {
	if h := t.hello; h != nil {
		t.hello = nil
		return protocol.TypeHello, h, nil
	}
	var b [128]byte
	if _, err := t.nc.Read(b[:]); err != nil {
		return 0, nil, err
	}
	return protocol.TypePong, nil, nil // ignored, as a PONG is
}

func (*sseTransport) Buffered() bool  { return false }
func (*sseTransport) Release()        {}
func (*sseTransport) SetMaxFrame(int) {}

// sseResponseHead starts a stream; without a length the response ends
// with the connection.
const sseResponseHead = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n" +
	"Access-Control-Allow-Origin: *\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n"

func (t *sseTransport) start(dst []byte) []byte {
	if t.started {
		return dst
	}
	t.started = true
	return append(dst, sseResponseHead...)
}

func (t *sseTransport) AppendFrame(dst []byte, typ byte, body []byte) []byte {
	switch typ {
	case protocol.TypeWelcome:
		dst = appendRetry(t.start(dst), retryAfter())
		return appendEvent(dst, "welcome", body)
	case protocol.TypeGoAway:
		var g protocol.GoAway
		_ = protocol.ParseJSON(body, &g)
		dst = appendRetry(t.start(dst), g.ReconnectAfterMs)
		return appendEvent(dst, "goaway", body)
	case protocol.TypeError:
		if !t.started {
			// Before the stream: an HTTP error, which EventSource does not retry.
			t.started = true
			var e protocol.ErrorBody
			_ = protocol.ParseJSON(body, &e)
			return appendHTTPError(dst, httpStatusOf(e.Code), body, e.RetryAfterMs)
		}
		return appendEvent(dst, "error", body)
	}
	return dst // PONG and PUBACK have no place on a one-way stream
}

func (t *sseTransport) AppendSeqFrame(dst []byte, typ byte, seq uint64, payload []byte) []byte {
	if typ != protocol.TypeDeliver {
		return dst
	}
	dst = append(dst, "id: "...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, '\n')
	if len(payload) > 0 && utf8.Valid(payload) && bytes.IndexByte(payload, '\r') < 0 {
		return appendEvent(dst, "deliver", payload)
	}
	dst = append(dst, "event: deliver64\n"...)
	if len(payload) == 0 {
		// EventSource drops an event whose data is empty; a line feed is
		// data that base64 decoders skip.
		return append(dst, "data:\ndata:\n\n"...)
	}
	dst = append(dst, "data: "...)
	dst = base64.StdEncoding.AppendEncode(dst, payload)
	return append(dst, "\n\n"...)
}

// appendClose: the response ends with the connection.
func (*sseTransport) appendClose(dst []byte) []byte { return dst }

func (*sseTransport) appendKeepalive(dst []byte) []byte { return append(dst, ":\n\n"...) }

func (*sseTransport) rawConn(nc net.Conn) (syscall.RawConn, bool) { return socketRawConn(nc) }

func appendRetry(dst []byte, ms int64) []byte {
	dst = append(dst, "retry: "...)
	dst = strconv.AppendInt(dst, max(ms, 0), 10)
	return append(dst, '\n')
}

// appendEvent appends an event whose data may span lines (one data field
// per line, which EventSource joins with line feeds).
func appendEvent(dst []byte, event string, data []byte) []byte {
	dst = append(dst, "event: "...)
	dst = append(dst, event...)
	dst = append(dst, '\n')
	for {
		line, rest, more := bytes.Cut(data, []byte{'\n'})
		dst = append(dst, "data: "...)
		dst = append(dst, line...)
		dst = append(dst, '\n')
		if !more {
			return append(dst, '\n')
		}
		data = rest
	}
}
