package socketserver

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gobwas/ws"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// transport is a connection's framing plus what only the server needs:
// how to end the stream politely and a label for metrics.
type transport struct {
	protocol.Codec
	ws bool
}

// readBufferSize is the read window of a connection: idle connections are
// the common case, so it is small; larger frames borrow a pooled buffer.
const readBufferSize = 512

func newTCPTransport(nc net.Conn, maxFrame int) transport {
	return transport{Codec: protocol.NewReader(nc, maxFrame, readBufferSize)}
}

func newWSTransport(nc net.Conn, maxFrame int, control func(ws.OpCode, []byte)) transport {
	return transport{Codec: protocol.NewWSReader(nc, maxFrame, readBufferSize, false, control), ws: true}
}

func (t transport) name() string {
	if t.ws {
		return "ws"
	}
	return "tcp"
}

// appendClose appends a WebSocket close frame: 1002 after a frame that
// breaks RFC 6455, else 1000. TCP just closes.
func (t transport) appendClose(dst []byte) []byte {
	if !t.ws {
		return dst
	}
	status := ws.StatusNormalClosure
	if r, ok := t.Codec.(*protocol.WSReader); ok && r.ProtocolViolation() {
		status = ws.StatusProtocolError
	}
	dst, _ = protocol.AppendWSHeader(dst, ws.OpClose, 2, false)
	return append(dst, byte(status>>8), byte(status))
}

// refuseTimeout bounds reading the request of a WebSocket client that is
// refused, and writing the answer.
const refuseTimeout = time.Second

// refuseWS answers a WebSocket client over the connection limit with HTTP
// 503, Retry-After and the ERROR body (server_full) as JSON, without an
// upgrade. The request is read first: closing with unread input would
// reset the connection and could lose the answer.
func refuseWS(nc net.Conn, retryAfterMs int64) {
	_ = nc.SetDeadline(time.Now().Add(refuseTimeout))
	if _, err := http.ReadRequest(bufio.NewReader(io.LimitReader(nc, 8<<10))); err != nil {
		return
	}
	body := protocol.MustJSON(protocol.ErrorBody{Code: protocol.CodeServerFull,
		Message: "server is at its connection limit; try another", RetryAfterMs: retryAfterMs})
	_, _ = fmt.Fprintf(nc, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: %d\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\nConnection: close\r\n\r\n%s", (retryAfterMs+999)/1000, len(body), body)
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
