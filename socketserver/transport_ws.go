package socketserver

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/gobwas/ws"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// wsFactory opens WebSocket connections, upgraded on /ws with the scp.v1
// subprotocol (upgradeWS): one frame per binary message.
type wsFactory struct{}

func (wsFactory) name() string { return "ws" }

func (wsFactory) open(nc net.Conn, maxFrame int, out *writer) transport {
	// WebSocket pings are answered here; the device's PING frames are
	// protocol frames, answered by the session.
	control := func(op ws.OpCode, payload []byte) {
		if op == ws.OpPing {
			out.write(func(dst []byte) []byte {
				dst, _ = protocol.AppendWSHeader(dst, ws.OpPong, len(payload), false)
				return append(dst, payload...)
			})
		}
	}
	return wsTransport{protocol.NewWSReader(nc, maxFrame, readBufferSize, false, control)}
}

// wsTransport is a single pointer, so that it is stored in a transport
// interface without an allocation.
type wsTransport struct{ *protocol.WSReader }

func (wsTransport) name() string { return "ws" }

// appendClose appends a close frame: 1002 after a frame that breaks
// RFC 6455, else 1000.
func (t wsTransport) appendClose(dst []byte) []byte {
	status := ws.StatusNormalClosure
	if t.ProtocolViolation() {
		status = ws.StatusProtocolError
	}
	dst, _ = protocol.AppendWSHeader(dst, ws.OpClose, 2, false)
	return append(dst, byte(status>>8), byte(status))
}

func (wsTransport) rawConn(nc net.Conn) (syscall.RawConn, bool) { return socketRawConn(nc) }

// refuseTimeout bounds reading the request of a WebSocket client that is
// refused, and writing the answer.
const refuseTimeout = time.Second

// refuse answers an HTTP client over the connection limit with 503,
// Retry-After and the ERROR body (server_full) as JSON, without an
// upgrade. The request is read first: closing with unread input would
// reset the connection and could lose the answer.
func (httpFactory) refuse(nc net.Conn, retryAfterMs int64) {
	_ = nc.SetDeadline(time.Now().Add(refuseTimeout))
	if _, err := http.ReadRequest(bufio.NewReader(io.LimitReader(nc, 8<<10))); err != nil {
		return
	}
	writeHTTPError(nc, protocol.CodeServerFull, "server is at its connection limit; try another", retryAfterMs)
}

// upgradeWS performs the handshake on /ws, whose head the HTTP listener
// read already, selecting scp.v1. A client that offers subprotocols but
// not scp.v1 is refused with 400, as the contract says.
func upgradeWS(nc net.Conn, head []byte) error {
	offeredOther := false
	u := ws.Upgrader{
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
	_, err := u.Upgrade(struct {
		io.Reader
		io.Writer
	}{io.MultiReader(bytes.NewReader(head), nc), nc})
	return err
}
