package socketserver

import (
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/socketcluster/socketcluster/socketserver/grpcframe"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/scpv1"
)

// Connect calls on the connections the gRPC listener handed to grpc-go
// (those whose first call was another one: tools, mostly). Each call is
// one connection of the session model; grpc-go owns the socket, so the
// call stands in for it (grpcConn, the conn's nc): the writer's frames,
// encoded as on TCP, become ServerFrame messages, and the read loop's
// frames come from ClientFrame messages.

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
	go c.serve(&grpcCallTransport{gc: gc, max: limit}, full)
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

// grpcCallTransport reads ClientFrames as protocol frames; frames to send are
// encoded as on TCP, and grpcConn.Write sends them as ServerFrames.
type grpcCallTransport struct {
	gc  *grpcConn
	max int     // read loop only, like the other codecs' limits
	num [8]byte // body of the last ACK
}

func (*grpcCallTransport) name() string { return grpcName }

func (t *grpcCallTransport) ReadFrame() (byte, []byte, error) {
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
	return clientFrame(&m, &t.num, t.gc.token, t.max, &t.gc.hello)
}

// clientFrame is the protocol frame of a ClientFrame, on both gRPC
// paths: a HELLO without a token takes the call's (authorization
// metadata), and hello (if any) records that a HELLO came.
func clientFrame(m *scpv1.ClientFrame, num *[8]byte, token string, max int, hello *atomic.Bool) (byte, []byte, error) {
	typ, body, err := grpcframe.FromClient(m, num)
	if err != nil {
		return 0, nil, err
	}
	if typ == protocol.TypeHello {
		if h := m.GetHello(); h.GetToken() == "" && token != "" {
			body = protocol.MustJSON(protocol.Hello{Protocol: int(h.GetProtocol()), Device: h.GetDevice(),
				Token: token, LastSeq: h.GetLastSeq()})
		}
		if hello != nil {
			hello.Store(true)
		}
	}
	if 1+len(body) > max {
		return 0, nil, protocol.Errorf(protocol.CodeFrameTooLarge, "%s of %d bytes exceeds %d", protocol.TypeName(typ), 1+len(body), max)
	}
	return typ, body, nil
}

func (*grpcCallTransport) Buffered() bool      { return false }
func (*grpcCallTransport) Release()            {}
func (t *grpcCallTransport) SetMaxFrame(n int) { t.max = n }

func (*grpcCallTransport) AppendFrame(dst []byte, typ byte, body []byte) []byte {
	return protocol.AppendFrame(dst, typ, body)
}

func (*grpcCallTransport) AppendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	return protocol.AppendSeqFrame(dst, typ, n, payload)
}

// appendClose: the call ends when the stand-in socket closes.
func (*grpcCallTransport) appendClose(dst []byte) []byte { return dst }

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
