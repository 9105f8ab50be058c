package socketserver

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"strings"

	"github.com/gobwas/ws"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// transport is how frames look on one kind of listener. Both kinds read from
// a net.Conn with small buffers and encode into the connection's single
// output buffer, so the rest of the connection code is shared.
type transport interface {
	// readFrame returns the next frame; body is valid until the next call.
	readFrame() (typ byte, body []byte, err error)
	// buffered reports whether more input is already read, so that ACKs can
	// be coalesced while a burst is being processed.
	buffered() bool
	appendFrame(dst []byte, typ byte, body []byte) []byte
	appendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte
	// appendClose appends what ends the stream politely (a WebSocket close frame).
	appendClose(dst []byte) []byte
	name() string
}

const readBufferSize = 512

type tcpTransport struct{ r *protocol.Reader }

func newTCPTransport(nc net.Conn, maxFrame int) *tcpTransport {
	return &tcpTransport{r: protocol.NewReader(nc, maxFrame, readBufferSize)}
}

func (t *tcpTransport) readFrame() (byte, []byte, error) { return t.r.ReadFrame() }
func (t *tcpTransport) buffered() bool                   { return t.r.Buffered() > 0 }
func (t *tcpTransport) appendFrame(dst []byte, typ byte, body []byte) []byte {
	return protocol.AppendFrame(dst, typ, body)
}
func (t *tcpTransport) appendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	return protocol.AppendSeqFrame(dst, typ, n, payload)
}
func (t *tcpTransport) appendClose(dst []byte) []byte { return dst }
func (t *tcpTransport) name() string                  { return "tcp" }

// wsTransport carries one frame per binary WebSocket message (no length prefix).
type wsTransport struct {
	br  *bufio.Reader
	max int
	buf []byte
	// control answers WebSocket pings through the connection's writer.
	control func(op ws.OpCode, payload []byte)
}

func newWSTransport(nc net.Conn, maxFrame int, control func(ws.OpCode, []byte)) *wsTransport {
	return &wsTransport{br: bufio.NewReaderSize(nc, readBufferSize), max: maxFrame, control: control}
}

func (t *wsTransport) name() string   { return "ws" }
func (t *wsTransport) buffered() bool { return t.br.Buffered() > 0 }

func (t *wsTransport) readFrame() (byte, []byte, error) {
	msg := t.buf[:0]
	started := false
	for {
		h, err := ws.ReadHeader(t.br)
		if err != nil {
			return 0, nil, err
		}
		if h.OpCode.IsControl() {
			if h.Length > 125 {
				return 0, nil, io.ErrUnexpectedEOF
			}
			var p [125]byte
			if _, err := io.ReadFull(t.br, p[:h.Length]); err != nil {
				return 0, nil, err
			}
			ws.Cipher(p[:h.Length], h.Mask, 0)
			if h.OpCode == ws.OpClose {
				return 0, nil, io.EOF
			}
			t.control(h.OpCode, p[:h.Length])
			continue
		}
		switch {
		case h.OpCode == ws.OpText:
			return 0, nil, protocol.Errorf(protocol.CodeBadFrame, "text messages are not frames; send binary messages")
		case h.OpCode == ws.OpBinary && started, h.OpCode == ws.OpContinuation && !started:
			return 0, nil, protocol.Errorf(protocol.CodeBadFrame, "broken WebSocket fragmentation")
		}
		started = true
		if int64(len(msg))+h.Length > int64(t.max) {
			return 0, nil, protocol.Errorf(protocol.CodeFrameTooLarge, "message of at least %d bytes exceeds the limit of %d", int64(len(msg))+h.Length, t.max)
		}
		n := len(msg)
		msg = grow(msg, int(h.Length))
		if _, err := io.ReadFull(t.br, msg[n:]); err != nil {
			return 0, nil, err
		}
		ws.Cipher(msg[n:], h.Mask, 0)
		if h.Fin {
			break
		}
	}
	// Keep only small buffers between messages: idle connections stay cheap.
	if cap(msg) <= readBufferSize {
		t.buf = msg[:0]
	} else {
		t.buf = nil
	}
	if len(msg) == 0 {
		return 0, nil, protocol.Errorf(protocol.CodeBadFrame, "frame length is 0")
	}
	if !protocol.KnownType(msg[0]) {
		return 0, nil, protocol.Errorf(protocol.CodeBadFrame, "unknown frame type %s", protocol.TypeName(msg[0]))
	}
	return msg[0], msg[1:], nil
}

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n, max(len(b)+n, 2*cap(b)))
	copy(nb, b)
	return nb
}

// appendWSHeader appends an unmasked server frame header.
func appendWSHeader(dst []byte, op ws.OpCode, n int) []byte {
	dst = append(dst, 0x80|byte(op))
	switch {
	case n < 126:
		return append(dst, byte(n))
	case n <= 0xFFFF:
		return binary.BigEndian.AppendUint16(append(dst, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(dst, 127), uint64(n))
	}
}

func (t *wsTransport) appendFrame(dst []byte, typ byte, body []byte) []byte {
	dst = appendWSHeader(dst, ws.OpBinary, 1+len(body))
	return append(append(dst, typ), body...)
}

func (t *wsTransport) appendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	dst = appendWSHeader(dst, ws.OpBinary, 9+len(payload))
	dst = binary.BigEndian.AppendUint64(append(dst, typ), n)
	return append(dst, payload...)
}

func (t *wsTransport) appendClose(dst []byte) []byte {
	return append(appendWSHeader(dst, ws.OpClose, 2), 0x03, 0xE8) // 1000 normal closure
}

// upgradeWS performs the handshake on /ws, selecting scp.v1. A client that
// offers subprotocols but not scp.v1 is refused with 400, as the contract says.
func upgradeWS(nc net.Conn) error {
	offeredOther := false
	u := ws.Upgrader{
		OnRequest: func(uri []byte) error {
			path, _, _ := strings.Cut(string(uri), "?")
			if path != "/ws" {
				return ws.RejectConnectionError(ws.RejectionStatus(404), ws.RejectionReason("not found: the WebSocket endpoint is /ws"))
			}
			return nil
		},
		ProtocolCustom: func(v []byte) (string, bool) {
			for _, p := range strings.Split(string(v), ",") {
				if strings.TrimSpace(p) == protocol.Subprotocol {
					return protocol.Subprotocol, true
				}
			}
			offeredOther = true
			return "", true
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			if offeredOther {
				return nil, ws.RejectConnectionError(ws.RejectionStatus(400), ws.RejectionReason("subprotocol scp.v1 required"))
			}
			return nil, nil
		},
	}
	_, err := u.Upgrade(nc)
	return err
}
