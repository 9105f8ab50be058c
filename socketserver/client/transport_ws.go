package client

import (
	"context"
	"io"

	"github.com/gobwas/ws"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// wsTransport speaks frames in binary WebSocket messages (ws://, wss://).
type wsTransport struct{ c *Client }

func (t wsTransport) dial(ctx context.Context, s *session, hello protocol.Hello) (link, error) {
	c := t.c
	d := ws.Dialer{Timeout: c.cfg.DialTimeout, Protocols: []string{protocol.Subprotocol},
		TLSConfig: c.cfg.TLS, NetDial: c.netDial}
	nc, br, _, err := d.Dial(ctx, c.cfg.Addr)
	if err != nil {
		return nil, err
	}
	var src io.Reader = nc
	if br != nil {
		src = br // holds bytes the server sent right after the handshake
	}
	// WebSocket-level pings are answered through the writer.
	onControl := func(op ws.OpCode, p []byte) {
		if op == ws.OpPing {
			c.mu.Lock()
			s.extra = appendWSPong(s.extra, p)
			c.mu.Unlock()
			s.wake()
		}
	}
	// Clients mask what they send.
	l := &streamLink{nc: nc, codec: protocol.NewWSReader(src, c.cfg.MaxFrameBytes, readBufferSize, true, onControl)}
	c.mu.Lock()
	s.extra = l.codec.AppendFrame(s.extra, protocol.TypeHello, protocol.MustJSON(hello))
	c.mu.Unlock()
	return l, nil
}

// appendWSPong answers a WebSocket-level ping.
func appendWSPong(dst []byte, payload []byte) []byte {
	dst, start := protocol.AppendWSHeader(dst, ws.OpPong, len(payload), true)
	return protocol.MaskFrom(append(dst, payload...), start)
}
