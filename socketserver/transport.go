package socketserver

import (
	"bufio"
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
type wsTransport struct{ r *protocol.WSReader }

func newWSTransport(nc net.Conn, maxFrame int, control func(ws.OpCode, []byte)) *wsTransport {
	return &wsTransport{r: protocol.NewWSReader(bufio.NewReaderSize(nc, readBufferSize), maxFrame, readBufferSize, control)}
}

func (t *wsTransport) name() string                     { return "ws" }
func (t *wsTransport) buffered() bool                   { return t.r.Buffered() }
func (t *wsTransport) readFrame() (byte, []byte, error) { return t.r.ReadFrame() }
func (t *wsTransport) appendFrame(dst []byte, typ byte, body []byte) []byte {
	return protocol.AppendWSFrame(dst, typ, body, false)
}
func (t *wsTransport) appendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	return protocol.AppendWSSeqFrame(dst, typ, n, payload, false)
}
func (t *wsTransport) appendClose(dst []byte) []byte {
	dst, _ = protocol.AppendWSHeader(dst, ws.OpClose, 2, false)
	return append(dst, 0x03, 0xE8) // 1000 normal closure
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
