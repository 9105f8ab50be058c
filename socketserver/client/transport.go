package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/gobwas/ws"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// transport is how frames look on the wire: length-prefixed over TCP, one
// masked binary message per frame over WebSocket. The session code above it
// is the same for both.
type transport interface {
	// readFrame returns the next frame; body is valid until the next call.
	readFrame() (typ byte, body []byte, err error)
	// buffered reports whether more input is already read, so that a burst
	// of deliveries is acknowledged once, at its end.
	buffered() bool
	appendFrame(dst []byte, typ byte, body []byte) []byte
	appendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte
}

const readBufferSize = 4096

// dial connects to addr and returns the connection with its framing. onWSPing
// receives WebSocket-level pings, which must be answered through the writer.
func (c *Client) dial(ctx context.Context, onWSPing func([]byte)) (net.Conn, transport, error) {
	addr := c.cfg.Addr
	if strings.HasPrefix(addr, "ws://") || strings.HasPrefix(addr, "wss://") {
		d := ws.Dialer{Timeout: c.cfg.DialTimeout, Protocols: []string{protocol.Subprotocol},
			TLSConfig: c.cfg.TLS, NetDial: c.netDial}
		nc, br, _, err := d.Dial(ctx, addr)
		if err != nil {
			return nil, nil, err
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
		return nc, wsTransport{protocol.NewWSReader(bufio.NewReaderSize(src, readBufferSize), c.cfg.MaxFrameBytes, readBufferSize, onControl)}, nil
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	nc, err := c.netDial(dctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	if c.cfg.TLS != nil {
		cfg := c.cfg.TLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			_ = nc.Close()
			return nil, nil, fmt.Errorf("tls handshake: %w", err)
		}
		nc = tc
	}
	return nc, tcpTransport{protocol.NewReader(nc, c.cfg.MaxFrameBytes, readBufferSize)}, nil
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

type tcpTransport struct{ r *protocol.Reader }

func (t tcpTransport) readFrame() (byte, []byte, error) { return t.r.ReadFrame() }
func (t tcpTransport) buffered() bool                   { return t.r.Buffered() > 0 }
func (t tcpTransport) appendFrame(dst []byte, typ byte, body []byte) []byte {
	return protocol.AppendFrame(dst, typ, body)
}
func (t tcpTransport) appendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	return protocol.AppendSeqFrame(dst, typ, n, payload)
}

type wsTransport struct{ r *protocol.WSReader }

func (t wsTransport) readFrame() (byte, []byte, error) { return t.r.ReadFrame() }
func (t wsTransport) buffered() bool                   { return t.r.Buffered() }

// Clients must mask what they send.
func (t wsTransport) appendFrame(dst []byte, typ byte, body []byte) []byte {
	return protocol.AppendWSFrame(dst, typ, body, true)
}
func (t wsTransport) appendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	return protocol.AppendWSSeqFrame(dst, typ, n, payload, true)
}

// appendWSPong answers a WebSocket-level ping.
func appendWSPong(dst []byte, payload []byte) []byte {
	dst, start := protocol.AppendWSHeader(dst, ws.OpPong, len(payload), true)
	return protocol.MaskFrom(append(dst, payload...), start)
}
