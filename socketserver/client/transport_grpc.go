package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/socketcluster/socketcluster/socketserver/grpcframe"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/scpv1"
)

// grpcTransport speaks protocol v1 on scp.v1.Device/Connect, one call per
// connection ("grpc://host:port", or "grpcs://host:port" with TLS). The
// call stands in for a socket under a streamLink: frames are built as on
// TCP, and grpcConn sends each as a ClientFrame.
type grpcTransport struct{ c *Client }

// grpcAddr is the host:port of a grpc:// or grpcs:// address, and whether it is TLS.
func grpcAddr(addr string) (hostport string, secure bool) {
	if rest, ok := strings.CutPrefix(addr, "grpcs://"); ok {
		return strings.TrimSuffix(rest, "/"), true
	}
	return strings.TrimSuffix(strings.TrimPrefix(addr, "grpc://"), "/"), false
}

func (t grpcTransport) dial(ctx context.Context, s *session, hello protocol.Hello) (link, error) {
	c := t.c
	hostport, secure := grpcAddr(c.cfg.Addr)
	creds := insecure.NewCredentials()
	if secure || c.cfg.TLS != nil {
		cfg := c.cfg.TLS
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		creds = credentials.NewTLS(cfg)
	}
	var dialErr atomic.Pointer[error]
	cc, err := grpc.NewClient("passthrough:///"+hostport,
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			nc, err := c.netDial(ctx, "tcp", addr)
			if err != nil {
				dialErr.Store(&err)
			}
			return nc, err
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(c.cfg.MaxFrameBytes+64)))
	if err != nil {
		return nil, err
	}
	// Connect now, so that a server out of reach is a dial failure as on
	// the other transports, not a failed first read.
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	cc.Connect()
	for st := cc.GetState(); st != connectivity.Ready; st = cc.GetState() {
		if st == connectivity.TransientFailure || !cc.WaitForStateChange(dctx, st) {
			cc.Close()
			if e := dialErr.Load(); e != nil {
				return nil, *e
			}
			if dctx.Err() != nil {
				return nil, fmt.Errorf("connect %s: %w", hostport, dctx.Err())
			}
			return nil, fmt.Errorf("connect %s: no HTTP/2 connection (is it the gRPC listener?)", hostport)
		}
	}
	callCtx, callCancel := context.WithCancel(context.Background())
	stream, err := scpv1.NewDeviceClient(cc).Connect(callCtx)
	if err != nil {
		callCancel()
		cc.Close()
		return nil, err
	}
	g := &grpcConn{cc: cc, stream: stream, cancel: callCancel}
	l := &streamLink{nc: g, codec: &grpcCodec{g}}
	c.mu.Lock()
	s.extra = l.codec.AppendFrame(s.extra, protocol.TypeHello, protocol.MustJSON(hello))
	c.mu.Unlock()
	return l, nil
}

// grpcConn is a Connect call in the place of a socket: Write sends the
// frames built as on TCP, Close half-closes the call (the server then
// ends it) and cuts it after a grace period; the deadlines are timers.
type grpcConn struct {
	cc     *grpc.ClientConn
	stream scpv1.Device_ConnectClient
	cancel context.CancelFunc

	sendMu    sync.Mutex // Send and CloseSend are not safe together
	closeOnce sync.Once
	timedOut  atomic.Bool

	mu        sync.Mutex // guards readTimer
	readTimer *time.Timer
	writeDead time.Time // the writer's only
}

// grpcCloseGrace is how long a closed call waits for the server to end it
// (and so receive the last ACK) before it is cut.
const grpcCloseGrace = time.Second

func (g *grpcConn) abort() {
	g.cancel()
	_ = g.cc.Close()
}

func (*grpcConn) Read([]byte) (int, error) { return 0, errors.New("a gRPC call has no byte stream") }

func (g *grpcConn) Write(b []byte) (int, error) {
	if d := g.writeDead; !d.IsZero() {
		t := time.AfterFunc(time.Until(d), g.abort)
		defer t.Stop()
	}
	g.sendMu.Lock()
	defer g.sendMu.Unlock()
	return grpcframe.Each(b, func(typ byte, body []byte) error {
		m, err := grpcframe.Client(typ, body)
		if err != nil {
			return err
		}
		return g.stream.Send(m)
	})
}

func (g *grpcConn) Close() error {
	g.closeOnce.Do(func() {
		if !g.sendMu.TryLock() {
			g.abort() // a send is stuck on flow control
			return
		}
		_ = g.stream.CloseSend()
		g.sendMu.Unlock()
		time.AfterFunc(grpcCloseGrace, g.abort)
	})
	return nil
}

func (g *grpcConn) LocalAddr() net.Addr  { return nil }
func (g *grpcConn) RemoteAddr() net.Addr { return nil }

func (g *grpcConn) SetDeadline(t time.Time) error {
	_ = g.SetReadDeadline(t)
	return g.SetWriteDeadline(t)
}

// SetReadDeadline: when t passes, the call is cut and the pending read
// fails with a timeout.
func (g *grpcConn) SetReadDeadline(t time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.readTimer != nil {
		g.readTimer.Stop()
	}
	if !t.IsZero() {
		g.readTimer = time.AfterFunc(time.Until(t), func() {
			g.timedOut.Store(true)
			g.abort()
		})
	}
	return nil
}

func (g *grpcConn) SetWriteDeadline(t time.Time) error {
	g.writeDead = t
	return nil
}

// grpcCodec reads ServerFrames as frames; frames to send are built as on
// TCP, for grpcConn.Write.
type grpcCodec struct{ g *grpcConn }

func (r *grpcCodec) ReadFrame() (byte, []byte, error) {
	m, err := r.g.stream.Recv()
	if err != nil {
		if r.g.timedOut.Load() {
			return 0, nil, grpcSilence{}
		}
		return 0, nil, err
	}
	return grpcframe.FromServer(m)
}

func (*grpcCodec) Buffered() bool  { return false }
func (*grpcCodec) Release()        {}
func (*grpcCodec) SetMaxFrame(int) {}

func (*grpcCodec) AppendFrame(dst []byte, typ byte, body []byte) []byte {
	return protocol.AppendFrame(dst, typ, body)
}

func (*grpcCodec) AppendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	return protocol.AppendSeqFrame(dst, typ, n, payload)
}

// grpcSilence is the read timeout of a call.
type grpcSilence struct{}

func (grpcSilence) Error() string   { return "grpc: nothing from the server within the deadline" }
func (grpcSilence) Timeout() bool   { return true }
func (grpcSilence) Temporary() bool { return true }
