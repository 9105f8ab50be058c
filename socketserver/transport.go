package socketserver

import (
	"net"
	"syscall"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// transport is a connection's wire as its read loop and writer see it:
// the framing (the Codec) and how the stream ends. Each transport is one
// file (transport_*.go); what only some transports can do is a separate
// capability interface (parker).
type transport interface {
	protocol.Codec
	// name labels the connection in metrics.
	name() string
	// appendClose appends what ends the stream politely after the last
	// frame; the socket is closed once it is written.
	appendClose(dst []byte) []byte
}

// parker is the capability of transports that read straight from their
// socket: an idle connection then waits for input in the poller, on the
// socket's descriptor, instead of in a goroutine blocked in ReadFrame.
// Transports that read through another layer (net/http, gRPC) have no
// descriptor whose readiness means a frame.
type parker interface {
	// rawConn returns the descriptor of nc, the socket the transport
	// reads; false when there is none (TLS decrypts in user space).
	rawConn(nc net.Conn) (syscall.RawConn, bool)
}

// socketRawConn is rawConn for transports that read nc itself.
func socketRawConn(nc net.Conn) (syscall.RawConn, bool) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	return rc, err == nil
}

// transportFactory opens the transport of each connection a listener
// accepts.
type transportFactory interface {
	name() string
	// open starts framing on nc once any handshake is done. Frames the
	// transport answers by itself (WebSocket pongs) are queued on out.
	open(nc net.Conn, maxFrame int, out *writer) transport
}

// upgrader is a factory whose connections begin with a handshake on the
// plain stream (after TLS), before any frame: the HTTP listener, whose
// request picks a WebSocket, an SSE stream or an upstream request.
type upgrader interface {
	// upgrade performs the handshake and returns the factory of the
	// connection's transport; nil when the connection was handed to
	// another server and is no device connection any more. It may call
	// free to give its --max-handshakes slot back early, once what is
	// left to wait for costs little.
	upgrade(s *Server, nc net.Conn, free func()) (transportFactory, error)
	// refuse answers a connection over the limit in the handshake's own
	// protocol, before any upgrade.
	refuse(nc net.Conn, retryAfterMs int64)
}

// readBufferSize is the read window of a connection: idle connections are
// the common case, so it is small; larger frames borrow a pooled buffer.
const readBufferSize = 512

// oneWay is the capability of transports on which the device sends
// nothing (SSE): no inbound heartbeat can prove it alive, so the server
// writes a keepalive every heartbeat interval (a dead peer fails those
// writes), and the end of the stream is the cue to reconnect after GOAWAY.
type oneWay interface {
	appendKeepalive(dst []byte) []byte
}

// The capabilities of transports that translate another protocol onto
// sessions (MQTT).
type (
	// welcomer learns the HELLO's outcome on the read loop, before it
	// reads on: the device and its session as the store returned it.
	welcomer interface {
		welcomed(device string, sess store.Session)
	}
	// goAwayEnder's GOAWAY is final (MQTT's DISCONNECT): the connection
	// closes right after it, as on one-way transports.
	goAwayEnder interface{ goAwayEnds() }
	// ownHeartbeat transports may agree their own silence limit with the
	// device (MQTT 3.1.1's keepalive); 0: the server's heartbeat timeout.
	ownHeartbeat interface{ silenceLimit() time.Duration }
	// windowed transports bound the deliveries in flight (MQTT 5's Receive
	// Maximum): windowFree is how many more may be sent before an ACK.
	windowed interface{ windowFree() int }
	// ender transports end every stream with a last message, however it
	// closes (gRPC's trailers: the device's call then ends with a status,
	// not a broken connection); their appendClose adds nothing.
	ender interface{ appendEnd(dst []byte) []byte }
	// flowControlled transports pace their own output (HTTP/2's windows):
	// the writer hands them what it would write to the socket.
	flowControlled interface {
		writeFlow(nc net.Conn, b []byte, deadline time.Time) error
	}
)

// endpoint is a listener and the transports it serves.
type endpoint struct {
	factory    transportFactory
	addr       func(*Config) string // "" = no listener
	bound      func(*Addrs) *string // where Start reports the bound address
	transports []string             // metric labels of what it serves
	alpn       string               // the protocol TLS negotiates, if any
}

// endpoints are the listeners, in the order they start. A new transport
// is one file and an entry here (or in the HTTP listener's routes).
var endpoints = []endpoint{
	{tcpFactory{}, func(c *Config) string { return c.TCPAddr }, func(a *Addrs) *string { return &a.TCP }, []string{"tcp"}, ""},
	{httpFactory{}, func(c *Config) string { return c.WSAddr }, func(a *Addrs) *string { return &a.WS }, []string{"ws", "sse"}, ""},
	{mqttFactory{}, func(c *Config) string { return c.MQTTAddr }, func(a *Addrs) *string { return &a.MQTT }, []string{mqttName}, ""},
	{grpcFactory{}, func(c *Config) string { return c.GRPCAddr }, func(a *Addrs) *string { return &a.GRPC }, []string{grpcName}, "h2"},
}

// transportNames are the metric labels of the registered transports.
func transportNames() []string {
	var names []string
	for _, e := range endpoints {
		names = append(names, e.transports...)
	}
	return names
}
