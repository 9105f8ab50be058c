package socketserver

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/scpv1"
)

// The gRPC listener (--grpc-addr). A connection whose first call is
// scp.v1.Device/Connect is a device: it is served here, on the parked path
// like a TCP connection (transport_grpc.go), one call per connection.
// Any other connection (health checks, reflection, tools that make
// several calls) is handed to grpc-go with the bytes read of it, and
// grpc-go serves all its calls, Connect included (transport_grpc_call.go).
// grpc-go holds four goroutines and their stacks per connection, which a
// parked device does not.

const grpcName = "grpc"

// grpcOverhead is what protobuf adds to a frame of --max-frame-bytes: the
// message size limit is the frame limit plus this.
const grpcOverhead = 64

// grpcMaxStreams bounds the streams of one connection.
const grpcMaxStreams = 4

// maxH2Start bounds what is read of a connection before its first call
// is known: the preface, settings and one header block.
const maxH2Start = 32 << 10

// grpcWindow is the receive window of a stream and of a connection: at
// least one largest message, so that a device is never stuck mid-frame;
// beyond it nothing is buffered for a device that does not read.
func (s *Server) grpcWindow() int { return max(s.cfg.MaxFrameBytes+grpcOverhead, 64<<10) }

// grpcMinPing: HTTP/2 pings more often than twice per heartbeat interval
// are abuse (too_many_pings), as in grpc-go's enforcement policy.
func (s *Server) grpcMinPing() time.Duration { return s.cfg.HeartbeatInterval / 2 }

type grpcFactory struct{}

func (grpcFactory) name() string { return grpcName }

// open is never called: upgrade returns the factory of each connection.
func (grpcFactory) open(net.Conn, int, *writer) transport {
	panic("the gRPC listener opens no transport itself")
}

// refuse: nothing may precede HTTP/2's handshake; the caller closes.
func (grpcFactory) refuse(net.Conn, int64) {}

// The handshake slot covers TLS and the preface: a gRPC client sends its
// first call only once its stack saw the server's settings and made the
// connection ready, which on a busy device or in a reconnect storm takes
// far longer than a round trip, and costs the server only a read.
func (grpcFactory) upgrade(s *Server, nc net.Conn, free func()) (transportFactory, error) {
	settings := protocol.AppendH2Header(nil, 12, protocol.H2Settings, 0, 0)
	settings = appendH2Setting(settings, protocol.H2SettingMaxConcurrentStreams, grpcMaxStreams)
	settings = appendH2Setting(settings, protocol.H2SettingInitialWindowSize, uint32(s.grpcWindow()))
	st, err := readH2Start(nc, settings, free)
	if err != nil {
		return nil, err
	}
	if !st.connect {
		_ = nc.SetDeadline(time.Time{})
		s.grpcConns.push(&replayConn{Conn: nc, head: bytes.NewReader(st.raw)})
		return nil, nil
	}
	// A device's call: acknowledge what grpc-go would have, open the
	// connection's receive window and answer the call's headers.
	var out []byte
	for range st.settings {
		out = protocol.AppendH2Header(out, 0, protocol.H2Settings, protocol.H2FlagAck, 0)
	}
	for _, p := range st.pings {
		out = append(protocol.AppendH2Header(out, 8, protocol.H2Ping, protocol.H2FlagAck, 0), p[:]...)
	}
	if d := s.grpcWindow() - protocol.H2DefaultWindow; d > 0 {
		out = appendWindowUpdate(out, 0, d)
	}
	out = protocol.AppendH2Header(out, len(grpcResponseHeaders), protocol.H2Headers, protocol.H2FlagEndHeaders, st.stream)
	out = append(out, grpcResponseHeaders...)
	if _, err := nc.Write(out); err != nil {
		return nil, err
	}
	return &grpcCallFactory{st: st}, nil
}

// grpcResponseHeaders: ":status: 200" (HPACK static index 8) and the
// content type; grpcTrailersOK ends a call with status OK; grpcRefused
// ends another call on a device's connection at once (a trailers-only
// response, UNIMPLEMENTED).
var (
	grpcResponseHeaders = protocol.AppendHPACKLiteral([]byte{0x88}, "content-type", "application/grpc")
	grpcTrailersOK      = protocol.AppendHPACKLiteral(nil, "grpc-status", "0")
	grpcRefused         = protocol.AppendHPACKLiteral(protocol.AppendHPACKLiteral(slices.Clone(grpcResponseHeaders),
		"grpc-status", "12"), "grpc-message", "one call per connection: this one serves scp.v1.Device/Connect")
)

func appendH2Setting(dst []byte, id uint16, v uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(dst, id), v)
}

func appendWindowUpdate(dst []byte, stream uint32, n int) []byte {
	return binary.BigEndian.AppendUint32(protocol.AppendH2Header(dst, 4, protocol.H2WindowUpdate, 0, stream), uint32(n))
}

func appendGoAway(dst []byte, lastStream, code uint32, debug string) []byte {
	dst = protocol.AppendH2Header(dst, 8+len(debug), protocol.H2GoAway, 0, 0)
	dst = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(dst, lastStream), code)
	return append(dst, debug...)
}

// h2Start is what a connection sent up to the end of its first header
// block.
type h2Start struct {
	raw     []byte // every byte read, for grpc-go
	rest    []byte // what followed the header block
	connect bool   // the call is scp.v1.Device/Connect, uncompressed
	stream  uint32
	token   string // of the authorization header
	// What the server acknowledges once it keeps the connection.
	settings int
	pings    [][8]byte
	// The device's flow control: its stream window (from its settings)
	// and the connection's send window.
	streamWindow, connWindow int64
}

var errNotH2 = errors.New("not an HTTP/2 connection preface")

// readH2Start reads the preface, sends settings once it is there (gRPC
// clients wait for them before their first call) and reads on until the
// first call's headers. Nothing else is answered: the connection may
// still go to grpc-go, which answers what it replays.
func readH2Start(nc net.Conn, settings []byte, prefaced func()) (*h2Start, error) {
	st := &h2Start{streamWindow: protocol.H2DefaultWindow, connWindow: protocol.H2DefaultWindow}
	buf := make([]byte, 0, 1024)
	var block []byte
	off := 0
	for {
		if off == 0 && len(buf) >= len(protocol.H2Preface) {
			if string(buf[:len(protocol.H2Preface)]) != protocol.H2Preface {
				return nil, errNotH2
			}
			off = len(protocol.H2Preface)
			if _, err := nc.Write(settings); err != nil {
				return nil, err
			}
			prefaced()
		}
		for off > 0 && len(buf)-off >= protocol.H2HeaderLen {
			n, typ, flags, stream := protocol.ParseH2Header(buf[off:])
			end := off + protocol.H2HeaderLen + n
			if end > len(buf) {
				break
			}
			p := buf[off+protocol.H2HeaderLen : end]
			off = end
			done, err := st.frame(typ, flags, stream, p, &block)
			if err != nil {
				return nil, err
			}
			if done {
				st.raw, st.rest = buf, buf[off:]
				return st, st.headers(block)
			}
		}
		if len(buf) == cap(buf) {
			if cap(buf) >= maxH2Start {
				return nil, fmt.Errorf("more than %d bytes before the first call", maxH2Start)
			}
			buf = append(buf, make([]byte, cap(buf))...)[:len(buf)]
		}
		m, err := nc.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err != nil && m == 0 {
			return nil, err
		}
	}
}

// frame takes one frame before the first call; done: its header block
// (in block) is complete.
func (st *h2Start) frame(typ, flags byte, stream uint32, p []byte, block *[]byte) (done bool, err error) {
	if st.stream != 0 && typ != protocol.H2Continuation {
		return false, errors.New("HTTP/2: header block interrupted")
	}
	switch typ {
	case protocol.H2Settings:
		if flags&protocol.H2FlagAck != 0 {
			return false, nil
		}
		v, ok, err := protocol.H2InitialWindow(p)
		if err != nil {
			return false, err
		}
		st.settings++
		if ok {
			st.streamWindow = v
		}
	case protocol.H2WindowUpdate:
		if len(p) == 4 && stream == 0 {
			st.connWindow += int64(binary.BigEndian.Uint32(p) & 0x7fffffff)
		}
	case protocol.H2Ping:
		if flags&protocol.H2FlagAck == 0 && len(p) == 8 && len(st.pings) < 4 {
			st.pings = append(st.pings, [8]byte(p))
		}
	case protocol.H2Headers:
		if stream == 0 || stream%2 == 0 {
			return false, errors.New("HTTP/2: HEADERS on a bad stream")
		}
		if p, err = headerFragment(flags, p); err != nil {
			return false, err
		}
		st.stream = stream
		*block = append(*block, p...)
		return flags&protocol.H2FlagEndHeaders != 0, nil
	case protocol.H2Continuation:
		if st.stream == 0 || stream != st.stream {
			return false, errors.New("HTTP/2: CONTINUATION without HEADERS")
		}
		*block = append(*block, p...)
		return flags&protocol.H2FlagEndHeaders != 0, nil
	case protocol.H2Data, protocol.H2RSTStream, protocol.H2GoAway:
		return false, fmt.Errorf("HTTP/2: frame type %d before any call", typ)
	}
	return false, nil // PRIORITY, unknown types
}

// headerFragment strips a HEADERS frame's padding and priority.
func headerFragment(flags byte, p []byte) ([]byte, error) {
	p, err := protocol.H2Unpad(flags, p)
	if err != nil {
		return nil, err
	}
	if flags&protocol.H2FlagPriority != 0 {
		if len(p) < 5 {
			return nil, errors.New("HTTP/2: bad priority")
		}
		p = p[5:]
	}
	return p, nil
}

// headers decodes the first call's header block: is it a device's
// Connect, and with which token?
func (st *h2Start) headers(block []byte) error {
	d := hpack.NewDecoder(4096, nil)
	d.SetMaxStringLength(maxH2Start)
	fields, err := d.DecodeFull(block)
	if err != nil {
		return fmt.Errorf("HTTP/2 header block: %w", err)
	}
	var method, path, ctype, encoding string
	for _, f := range fields {
		switch f.Name {
		case ":method":
			method = f.Value
		case ":path":
			path = f.Value
		case "content-type":
			ctype = f.Value
		case "grpc-encoding":
			encoding = f.Value
		case "authorization":
			if t, ok := strings.CutPrefix(f.Value, "Bearer "); ok {
				st.token = strings.TrimSpace(t)
			}
		}
	}
	st.connect = method == "POST" && path == scpv1.Device_Connect_FullMethodName &&
		(ctype == "application/grpc" || ctype == "application/grpc+proto") &&
		(encoding == "" || encoding == "identity")
	return nil
}

// grpcCallFactory opens the transport of one device's Connect call.
type grpcCallFactory struct{ st *h2Start }

func (f *grpcCallFactory) name() string { return grpcName }

func (f *grpcCallFactory) open(nc net.Conn, maxFrame int, out *writer) transport {
	return newGRPCTransport(f.st, nc, maxFrame, out)
}

// grpcOptions sizes grpc-go for the connections handed to it.
func (s *Server) grpcOptions() []grpc.ServerOption {
	maxMsg := s.cfg.MaxFrameBytes + grpcOverhead
	window := int32(s.grpcWindow())
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxMsg),
		grpc.MaxSendMsgSize(maxMsg),
		// A few streams leave room for the health and reflection calls
		// that tools make on one connection (grpcurl keeps its reflection
		// stream open during the call). Each stream counts as a connection
		// against --max-connections.
		grpc.MaxConcurrentStreams(grpcMaxStreams),
		grpc.ConnectionTimeout(s.cfg.HandshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: s.grpcMinPing()}),
		// A connection with no stream is closed after the hello timeout;
		// the server probes a silent connection as the heartbeat sweep would.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: s.cfg.HelloTimeout,
			Time: s.cfg.HeartbeatTimeout, Timeout: s.cfg.HeartbeatInterval}),
		// No read or write buffer (README, performance): the calls served
		// here are few and short.
		grpc.ReadBufferSize(0),
		grpc.WriteBufferSize(0),
		// Fixed windows, as on the device path: gRPC's bandwidth
		// estimation would grow them up to 16 MiB under load.
		grpc.InitialWindowSize(window),
		grpc.InitialConnWindowSize(window),
	}
}

// startGRPC prepares grpc-go for the connections the gRPC listener hands
// over: scp.v1.Device, the health service and, when configured, reflection.
func (s *Server) startGRPC() {
	gs := grpc.NewServer(s.grpcOptions()...)
	scpv1.RegisterDeviceServer(gs, grpcService{srv: s})
	s.grpcHealth = health.NewServer()
	s.grpcHealth.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.grpcHealth.SetServingStatus(scpv1.Device_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, s.grpcHealth)
	if s.cfg.GRPCReflection {
		reflection.Register(gs)
	}
	s.grpc = gs
	s.grpcConns = newConnListener()
	go func() { _ = gs.Serve(&grpcListener{Listener: s.grpcConns, srv: s}) }()
}

// grpcListener closes handed-over connections at once while the server
// is full or as many are open as it may hold: a connection counts as a
// device connection only once a stream starts, and those without one
// (closed after the hello timeout) must not eat the descriptors of the
// other listeners.
type grpcListener struct {
	net.Listener
	srv  *Server
	open atomic.Int64
}

func (l *grpcListener) Accept() (net.Conn, error) {
	s := l.srv
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if s.maxConns > 0 && (s.Connections() >= s.maxConns || l.open.Load() >= int64(s.maxConns)) {
			s.metrics.closes.WithLabelValues(ReasonRejected.String()).Inc()
			_ = nc.Close()
			continue
		}
		l.open.Add(1)
		return &countedConn{Conn: nc, open: &l.open}, nil
	}
}

// Addr: grpc-go logs it; the connections come from the gRPC listener.
func (l *grpcListener) Addr() net.Addr { return grpcAddr{} }

// countedConn leaves its listener's count when closed.
type countedConn struct {
	net.Conn
	open *atomic.Int64
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}

// grpcNotReady mirrors /readyz in the health service once draining.
func (s *Server) grpcNotReady() {
	if s.grpcHealth != nil {
		s.grpcHealth.Shutdown() // every service NOT_SERVING, for good
	}
}

// stopGRPC stops grpc-go gracefully (HTTP/2 GOAWAY, no new streams, the
// open ones end) until by, then closes what is left.
func (s *Server) stopGRPC(by time.Time) {
	if s.grpc == nil {
		return
	}
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	t := time.NewTimer(max(time.Until(by), 0))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.grpc.Stop()
		<-done
	}
}
