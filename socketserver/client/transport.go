package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/gobwas/ws"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

const readBufferSize = 4096

// webSocket reports whether Addr names the WebSocket listener.
func (c *Client) webSocket() bool {
	return strings.HasPrefix(c.cfg.Addr, "ws://") || strings.HasPrefix(c.cfg.Addr, "wss://")
}

// dial connects to addr and returns the connection with its framing and, on
// TCP, the recorder of the first bytes the server sends. onWSPing receives
// WebSocket-level pings, which must be answered through the writer.
func (c *Client) dial(ctx context.Context, onWSPing func([]byte)) (net.Conn, protocol.Codec, *firstBytes, error) {
	addr := c.cfg.Addr
	if c.webSocket() {
		d := ws.Dialer{Timeout: c.cfg.DialTimeout, Protocols: []string{protocol.Subprotocol},
			TLSConfig: c.cfg.TLS, NetDial: c.netDial}
		nc, br, _, err := d.Dial(ctx, addr)
		if err != nil {
			return nil, nil, nil, err
		}
		var src io.Reader = nc
		if br != nil {
			src = br // holds bytes the server sent right after the handshake
		}
		onControl := func(op ws.OpCode, p []byte) {
			if op == ws.OpPing {
				onWSPing(p)
			}
		}
		// Clients mask what they send.
		return nc, protocol.NewWSReader(src, c.cfg.MaxFrameBytes, readBufferSize, true, onControl), nil, nil
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	nc, err := c.netDial(dctx, "tcp", addr)
	if err != nil {
		return nil, nil, nil, err
	}
	if c.cfg.TLS != nil {
		cfg := c.cfg.TLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			_ = nc.Close()
			return nil, nil, nil, fmt.Errorf("tls handshake: %w", err)
		}
		nc = tc
	}
	first := &firstBytes{r: nc}
	return nc, protocol.NewReader(first, c.cfg.MaxFrameBytes, readBufferSize), first, nil
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
func (c *Client) httpAnswer(f *firstBytes) error {
	if f == nil {
		return nil
	}
	head := f.head
	if !bytes.HasPrefix(head, []byte("HTTP/")) {
		head = bytes.TrimLeft(head, " \t\r\n")
		lower := bytes.ToLower(head)
		if !bytes.HasPrefix(lower, []byte("<!doctype html")) && !bytes.HasPrefix(lower, []byte("<html")) {
			return nil
		}
	}
	status, _, _ := bytes.Cut(head, []byte("\n"))
	return &HTTPResponseError{Addr: c.cfg.Addr, Status: string(bytes.TrimRight(status, "\r")), TLS: c.cfg.TLS != nil}
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
	// TLS: the connection was made with TLS (so the WebSocket URL is wss://).
	TLS bool
}

func (e *HTTPResponseError) Error() string {
	scheme := "ws"
	if e.TLS {
		scheme = "wss"
	}
	return fmt.Sprintf("the server at %s answered HTTP (%q): this is not a protocol v1 TCP port; for WebSocket use %s://%s/ws",
		e.Addr, e.Status, scheme, e.Addr)
}

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

// appendWSPong answers a WebSocket-level ping.
func appendWSPong(dst []byte, payload []byte) []byte {
	dst, start := protocol.AppendWSHeader(dst, ws.OpPong, len(payload), true)
	return protocol.MaskFrom(append(dst, payload...), start)
}
