package client

import (
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

// dial connects to addr and returns the connection with its framing. onWSPing
// receives WebSocket-level pings, which must be answered through the writer.
func (c *Client) dial(ctx context.Context, onWSPing func([]byte)) (net.Conn, protocol.Codec, error) {
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
		// Clients mask what they send.
		return nc, protocol.NewWSReader(src, c.cfg.MaxFrameBytes, readBufferSize, true, onControl), nil
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
	return nc, protocol.NewReader(nc, c.cfg.MaxFrameBytes, readBufferSize), nil
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
