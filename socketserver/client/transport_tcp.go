package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// tcpTransport speaks length-prefixed frames on a TCP connection (TLS when
// Config.TLS is set).
type tcpTransport struct{ c *Client }

func (t tcpTransport) dial(ctx context.Context, s *session, hello protocol.Hello) (link, error) {
	c := t.c
	addr := c.cfg.Addr
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	nc, err := c.netDial(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if c.cfg.TLS != nil {
		cfg := c.cfg.TLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		nc = tc
	}
	first := &firstBytes{r: nc, addr: addr, tls: c.cfg.TLS != nil}
	l := &streamLink{nc: nc, codec: protocol.NewReader(first, c.cfg.MaxFrameBytes, readBufferSize), first: first}
	c.mu.Lock()
	s.extra = l.codec.AppendFrame(s.extra, protocol.TypeHello, protocol.MustJSON(hello))
	s.extra = l.codec.AppendFrame(s.extra, protocol.TypePing, httpProbe)
	c.mu.Unlock()
	return l, nil
}

// httpProbe is the body of the PING sent right after HELLO on TCP. A v1
// server echoes it in a PONG. An HTTP server, which waits for the end of its
// request line before it answers anything, reads the line break as the end
// of a malformed request and answers with an HTTP status at once, which
// httpAnswer recognises; without it the device would only time out.
var httpProbe = []byte("\r\n\r\n")

// firstBytesKept is how much of the server's first bytes firstBytes keeps:
// enough for an HTTP status line.
const firstBytesKept = 64

// firstBytes reads from a TCP connection and keeps the first bytes read.
// Only the reading goroutine uses it.
type firstBytes struct {
	r    io.Reader
	head []byte
	addr string
	tls  bool
}

func (f *firstBytes) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if room := firstBytesKept - len(f.head); room > 0 && n > 0 {
		f.head = append(f.head, p[:min(n, room)]...)
	}
	return n, err
}

// httpAnswer returns an *HTTPResponseError when the server's first bytes
// are an HTTP status line, or an HTML page (an HTTP/0.9 answer, which has
// no status line), else nil. The framing would read "HTTP" as the length of
// a frame of about 1.2 GB.
func (f *firstBytes) httpAnswer() error {
	head := f.head
	if !bytes.HasPrefix(head, []byte("HTTP/")) {
		head = bytes.TrimLeft(head, " \t\r\n")
		lower := bytes.ToLower(head)
		if !bytes.HasPrefix(lower, []byte("<!doctype html")) && !bytes.HasPrefix(lower, []byte("<html")) {
			return nil
		}
	}
	status, _, _ := bytes.Cut(head, []byte("\n"))
	return &HTTPResponseError{Addr: f.addr, Status: string(bytes.TrimRight(status, "\r")), TLS: f.tls}
}

// HTTPResponseError is the failure of a TCP connection whose server answered
// with HTTP: Addr is an HTTP or WebSocket listener, not a protocol v1 TCP
// listener. Run retries it like any failed connection; Event.Err carries it.
type HTTPResponseError struct {
	Addr string
	// Status is the start of the answer's first line, e.g. "HTTP/1.1 400
	// Bad Request" (or "<!DOCTYPE html>" from a server that took the HELLO
	// for an HTTP/0.9 request).
	Status string
	// TLS: the connection was made with TLS (so the WebSocket URL is
	// wss://, the SSE one https://).
	TLS bool
}

func (e *HTTPResponseError) Error() string {
	ws, sse := "ws", "http"
	if e.TLS {
		ws, sse = "wss", "https"
	}
	return fmt.Sprintf("the server at %s answered HTTP (%q): this is not a protocol v1 TCP port; for WebSocket use %s://%s/ws, for SSE %s://%s/sse",
		e.Addr, e.Status, ws, e.Addr, sse, e.Addr)
}
