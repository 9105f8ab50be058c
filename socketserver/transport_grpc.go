package socketserver

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/socketcluster/socketcluster/socketserver/grpcframe"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/scpv1"
)

// gRPC: each scp.v1.Device/Connect stream is one connection of the session
// model. gRPC owns the socket, so the stream stands in for it (grpcConn, the
// conn's nc): the writer's frames, encoded as on TCP, become ServerFrame
// messages, and the read loop's frames come from ClientFrame messages. The
// session, the registry, the heartbeat sweep and the drain are the ones of
// every transport.

const grpcName = "grpc"

// grpcOverhead is what protobuf adds to a frame of --max-frame-bytes: the
// message size limit is the frame limit plus this.
const grpcOverhead = 64

// grpcOptions sizes the gRPC server for many idle devices, one stream each.
func (s *Server) grpcOptions() []grpc.ServerOption {
	maxMsg := s.cfg.MaxFrameBytes + grpcOverhead
	// A stream's window holds at least one largest message, so that a
	// device is never stuck mid-frame; beyond it nothing is buffered for a
	// device that does not read.
	window := int32(max(maxMsg, 64<<10))
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxMsg),
		grpc.MaxSendMsgSize(maxMsg),
		// A device holds one stream; a few more leave room for the health
		// and reflection calls that tools make on the same connection
		// (grpcurl keeps its reflection stream open during the call).
		// Each stream counts as a connection against --max-connections.
		grpc.MaxConcurrentStreams(grpcMaxStreams),
		grpc.ConnectionTimeout(s.cfg.HandshakeTimeout),
		// The protocol's PINGs are the heartbeat; HTTP/2 pings more often
		// than twice per heartbeat interval are abuse (too_many_pings).
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: s.cfg.HeartbeatInterval / 2}),
		// A connection with no stream is closed after the hello timeout;
		// the server probes a silent connection as the heartbeat sweep would.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: s.cfg.HelloTimeout,
			Time: s.cfg.HeartbeatTimeout, Timeout: s.cfg.HeartbeatInterval}),
		// Idle memory (README, performance; 2,000 idle devices, against
		// gRPC's defaults): no write buffer saves 3.4 KiB RSS (30 KiB of
		// heap, mostly never touched) per connection, as each HTTP/2 frame
		// is then written at once (a pooled SharedWriteBuffer saves about as
		// much RSS, a third less heap); no read buffer saves 1.3 KiB RSS.
		// Devices send and receive little, so the extra syscalls under a
		// burst cost less than the buffers of every idle device.
		grpc.ReadBufferSize(0),
		grpc.WriteBufferSize(0),
		// Fixed windows save nothing when idle; they turn off gRPC's
		// bandwidth estimation, which grows them up to 16 MiB under load:
		// what a device that stops reading can make the server buffer.
		grpc.InitialWindowSize(window),
		grpc.InitialConnWindowSize(window),
	}
	if s.cfg.TLS != nil {
		opts = append(opts, grpc.Creds(slotCreds{TransportCredentials: credentials.NewTLS(s.cfg.TLS), slots: s.handshakes}))
	}
	return opts
}

// grpcMaxStreams bounds the streams of one connection.
const grpcMaxStreams = 4

// startGRPC binds the gRPC listener and serves scp.v1.Device, the health
// service and, when configured, reflection.
func (s *Server) startGRPC() error {
	l, err := net.Listen("tcp", s.cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen grpc %s: %w", s.cfg.GRPCAddr, err)
	}
	s.log.Info(fmt.Sprintf("listening grpc=%s", l.Addr()))
	s.addrs.GRPC = l.Addr().String()
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
	go func() { _ = gs.Serve(&grpcListener{Listener: l, srv: s}) }()
	return nil
}

// grpcListener closes new connections at once while the server is full or
// as many gRPC connections are open as it may hold: a connection counts
// as a device connection only once its stream starts, and those without a
// stream (closed after the hello timeout) must not eat the descriptors
// of the other listeners. As on TLS, no answer can precede the handshake.
type grpcListener struct {
	net.Listener
	srv  *Server
	open atomic.Int64
}

// With TLS, a connection takes a --max-handshakes slot once accepted, as
// on the other listeners (beyond the bound the next ones wait in the
// listen backlog, holding no descriptor); slotCreds frees it when the
// handshake ends.
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
		if s.cfg.TLS != nil {
			select {
			case s.handshakes <- struct{}{}:
			case <-s.ctx.Done():
				_ = nc.Close()
				return nil, net.ErrClosed
			}
		}
		l.open.Add(1)
		return &countedConn{Conn: nc, open: &l.open}, nil
	}
}

// slotCreds frees the connection's --max-handshakes slot (taken in
// grpcListener.Accept) once its TLS handshake ended, however.
type slotCreds struct {
	credentials.TransportCredentials
	slots chan struct{}
}

func (c slotCreds) ServerHandshake(nc net.Conn) (net.Conn, credentials.AuthInfo, error) {
	defer func() { <-c.slots }()
	return c.TransportCredentials.ServerHandshake(nc)
}

func (c slotCreds) Clone() credentials.TransportCredentials {
	return slotCreds{TransportCredentials: c.TransportCredentials.Clone(), slots: c.slots}
}

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

// stopGRPC stops the gRPC server gracefully (HTTP/2 GOAWAY, no new
// streams, the open ones end) until by, then closes what is left.
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

// grpcService serves scp.v1.Device.
type grpcService struct {
	scpv1.UnimplementedDeviceServer
	srv *Server
}

// Connect runs one device connection; the call ends once the connection
// closed its stand-in socket (after its last frame was sent).
func (g grpcService) Connect(stream scpv1.Device_ConnectServer) error {
	s := g.srv
	gc := &grpcConn{stream: stream, closed: make(chan struct{}), token: bearer(stream)}
	c := newConn(s, gc)
	gc.c = c
	full, ok := s.track(c)
	if !ok {
		return status.Error(codes.Unavailable, "server is shutting down")
	}
	limit := min(protocol.MaxFrameBeforeWelcome, s.cfg.MaxFrameBytes)
	go c.serve(&grpcTransport{gc: gc, max: limit}, full)
	<-gc.closed
	return nil
}

// bearer is the token of the call's authorization metadata, if any.
func bearer(stream grpc.ServerStream) string {
	md, _ := metadata.FromIncomingContext(stream.Context())
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
	}
	return ""
}

// grpcTransport reads ClientFrames as protocol frames; frames to send are
// encoded as on TCP, and grpcConn.Write sends them as ServerFrames.
type grpcTransport struct {
	gc  *grpcConn
	max int     // read loop only, like the other codecs' limits
	num [8]byte // body of the last ACK
}

func (*grpcTransport) name() string { return grpcName }

func (t *grpcTransport) ReadFrame() (byte, []byte, error) {
	var m scpv1.ClientFrame
	if err := t.gc.stream.RecvMsg(&m); err != nil {
		// A message above the size limit ends the call in gRPC itself
		// (RESOURCE_EXHAUSTED): no ERROR can follow. One that does not
		// unmarshal is a bad frame, as a body that does not parse.
		if status.Code(err) == codes.Internal && strings.Contains(err.Error(), "unmarshal") {
			return 0, nil, protocol.Errorf(protocol.CodeBadFrame, "ClientFrame does not parse")
		}
		return 0, nil, err
	}
	typ, body, err := grpcframe.FromClient(&m, &t.num)
	if err != nil {
		return 0, nil, err
	}
	if typ == protocol.TypeHello {
		if h := m.GetHello(); h.GetToken() == "" && t.gc.token != "" {
			body = protocol.MustJSON(protocol.Hello{Protocol: int(h.GetProtocol()), Device: h.GetDevice(),
				Token: t.gc.token, LastSeq: h.GetLastSeq()})
		}
		t.gc.hello.Store(true)
	}
	if 1+len(body) > t.max {
		return 0, nil, protocol.Errorf(protocol.CodeFrameTooLarge, "%s of %d bytes exceeds %d", protocol.TypeName(typ), 1+len(body), t.max)
	}
	return typ, body, nil
}

func (*grpcTransport) Buffered() bool      { return false }
func (*grpcTransport) Release()            {}
func (t *grpcTransport) SetMaxFrame(n int) { t.max = n }

func (*grpcTransport) AppendFrame(dst []byte, typ byte, body []byte) []byte {
	return protocol.AppendFrame(dst, typ, body)
}

func (*grpcTransport) AppendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	return protocol.AppendSeqFrame(dst, typ, n, payload)
}

// appendClose: the call ends when the stand-in socket closes.
func (*grpcTransport) appendClose(dst []byte) []byte { return dst }

// grpcConn is a Connect stream in the place of the conn's socket. Write
// sends the frames the writer queued as ServerFrames; Close ends the call;
// the deadlines are timers, as a stream has none.
type grpcConn struct {
	stream scpv1.Device_ConnectServer
	c      *conn
	token  string // of the call's metadata
	// hello is set once a HELLO arrived: the hello timeout is then over,
	// whatever its answer takes.
	hello atomic.Bool

	closeOnce sync.Once
	closed    chan struct{}

	mu            sync.Mutex // guards the timers
	readTimer     *time.Timer
	writeDeadline time.Time // writer only
}

var errNoByteStream = errors.New("a gRPC stream has no byte stream")

func (*grpcConn) Read([]byte) (int, error) { return 0, errNoByteStream }

// Write sends each frame of b (length-prefixed, as on TCP) as a
// ServerFrame. A device that does not read within the write deadline
// blocks the send on flow control: the call is then ended.
func (g *grpcConn) Write(b []byte) (int, error) {
	if d := g.writeDeadline; !d.IsZero() {
		t := time.AfterFunc(time.Until(d), func() { _ = g.Close() })
		defer t.Stop()
	}
	return grpcframe.Each(b, func(typ byte, body []byte) error {
		m, err := grpcframe.Server(typ, body)
		if err != nil {
			return err
		}
		return g.stream.SendMsg(m)
	})
}

// Close ends the call (Connect returns); a send or receive blocked on
// the stream then fails.
func (g *grpcConn) Close() error {
	g.closeOnce.Do(func() {
		g.mu.Lock()
		if g.readTimer != nil {
			g.readTimer.Stop()
		}
		g.mu.Unlock()
		close(g.closed)
	})
	return nil
}

func (g *grpcConn) LocalAddr() net.Addr { return grpcAddr{} }

func (g *grpcConn) RemoteAddr() net.Addr {
	if p, ok := peer.FromContext(g.stream.Context()); ok {
		return p.Addr
	}
	return grpcAddr{}
}

func (g *grpcConn) SetDeadline(t time.Time) error {
	_ = g.SetReadDeadline(t)
	return g.SetWriteDeadline(t)
}

// SetReadDeadline is the hello timeout, the only read deadline a
// connection has before the poller (which gRPC connections skip): when
// it passes before a HELLO arrived, the device gets hello_timeout.
func (g *grpcConn) SetReadDeadline(t time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.readTimer != nil {
		g.readTimer.Stop()
		g.readTimer = nil
	}
	if !t.IsZero() {
		g.readTimer = time.AfterFunc(time.Until(t), func() {
			if !g.hello.Load() {
				g.c.readFailed(grpcTimeout{})
			}
		})
	}
	return nil
}

// SetWriteDeadline is called by the writer alone, before each Write.
func (g *grpcConn) SetWriteDeadline(t time.Time) error {
	g.writeDeadline = t
	return nil
}

// grpcTimeout is the net.Error of a passed read deadline.
type grpcTimeout struct{}

func (grpcTimeout) Error() string   { return "grpc: read deadline passed" }
func (grpcTimeout) Timeout() bool   { return true }
func (grpcTimeout) Temporary() bool { return true }

type grpcAddr struct{}

func (grpcAddr) Network() string { return grpcName }
func (grpcAddr) String() string  { return grpcName }
