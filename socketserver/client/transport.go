package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
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
		return nc, &wsTransport{br: bufio.NewReaderSize(src, readBufferSize), max: c.cfg.MaxFrameBytes, onPing: onWSPing}, nil
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

type wsTransport struct {
	br     *bufio.Reader
	max    int
	buf    []byte
	onPing func([]byte)
}

func (t *wsTransport) buffered() bool { return t.br.Buffered() > 0 }

func (t *wsTransport) readFrame() (byte, []byte, error) {
	msg := t.buf[:0]
	for {
		h, err := ws.ReadHeader(t.br)
		if err != nil {
			return 0, nil, err
		}
		if h.OpCode.IsControl() {
			if h.Length > 125 {
				return 0, nil, fmt.Errorf("websocket control frame of %d bytes", h.Length)
			}
			var p [125]byte
			if _, err := io.ReadFull(t.br, p[:h.Length]); err != nil {
				return 0, nil, err
			}
			switch h.OpCode {
			case ws.OpClose:
				return 0, nil, io.EOF
			case ws.OpPing:
				t.onPing(append([]byte(nil), p[:h.Length]...))
			}
			continue
		}
		if h.OpCode == ws.OpText {
			return 0, nil, fmt.Errorf("server sent a text message")
		}
		if int64(len(msg))+h.Length > int64(t.max) {
			return 0, nil, fmt.Errorf("server message of %d bytes exceeds the limit of %d", int64(len(msg))+h.Length, t.max)
		}
		n := len(msg)
		msg = append(msg, make([]byte, h.Length)...)
		if _, err := io.ReadFull(t.br, msg[n:]); err != nil {
			return 0, nil, unexpectedEOF(err)
		}
		if h.Masked {
			ws.Cipher(msg[n:], h.Mask, 0)
		}
		if h.Fin {
			break
		}
	}
	t.buf = msg
	if len(msg) == 0 {
		return 0, nil, fmt.Errorf("empty websocket message")
	}
	return msg[0], msg[1:], nil
}

func (t *wsTransport) appendFrame(dst []byte, typ byte, body []byte) []byte {
	dst, start := appendMaskedHeader(dst, ws.OpBinary, 1+len(body))
	dst = append(append(dst, typ), body...)
	return maskFrom(dst, start)
}

func (t *wsTransport) appendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	dst, start := appendMaskedHeader(dst, ws.OpBinary, 9+len(payload))
	dst = binary.BigEndian.AppendUint64(append(dst, typ), n)
	return maskFrom(append(dst, payload...), start)
}

// appendMaskedHeader appends a client frame header (clients must mask) and
// returns where the payload starts; the mask is the 4 bytes before it.
func appendMaskedHeader(dst []byte, op ws.OpCode, n int) ([]byte, int) {
	dst = append(dst, 0x80|byte(op))
	switch {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xFFFF:
		dst = binary.BigEndian.AppendUint16(append(dst, 0x80|126), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint64(append(dst, 0x80|127), uint64(n))
	}
	mask := ws.NewMask()
	dst = append(dst, mask[:]...)
	return dst, len(dst)
}

func maskFrom(dst []byte, start int) []byte {
	ws.Cipher(dst[start:], [4]byte(dst[start-4:start]), 0)
	return dst
}

// appendWSPong answers a WebSocket-level ping.
func appendWSPong(dst []byte, payload []byte) []byte {
	dst, start := appendMaskedHeader(dst, ws.OpPong, len(payload))
	return maskFrom(append(dst, payload...), start)
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
