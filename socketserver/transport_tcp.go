package socketserver

import (
	"net"
	"syscall"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// tcpFactory opens raw TCP connections: length-prefixed frames on the
// stream, no handshake but TLS.
type tcpFactory struct{}

func (tcpFactory) name() string { return "tcp" }

func (tcpFactory) open(nc net.Conn, maxFrame int, _ *writer) transport {
	return tcpTransport{protocol.NewReader(nc, maxFrame, readBufferSize)}
}

// tcpTransport is a single pointer, so that it is stored in a transport
// interface without an allocation.
type tcpTransport struct{ *protocol.Reader }

func (tcpTransport) name() string { return "tcp" }

// appendClose: TCP just closes.
func (tcpTransport) appendClose(dst []byte) []byte { return dst }

func (tcpTransport) rawConn(nc net.Conn) (syscall.RawConn, bool) { return socketRawConn(nc) }
