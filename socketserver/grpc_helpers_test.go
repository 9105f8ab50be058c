package socketserver_test

import (
	"context"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/grpcframe"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/scpv1"
)

// grpcLink is a device on scp.v1.Device/Connect, speaking in frames as
// on TCP through grpcframe.
type grpcLink struct {
	cc     *grpc.ClientConn
	stream scpv1.Device_ConnectClient
	cancel context.CancelFunc
	once   sync.Once
}

func dialGRPCLink(addr string, opts ...grpc.CallOption) (*grpcLink, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	// The call fails fast when the server cannot be reached.
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := scpv1.NewDeviceClient(cc).Connect(ctx, opts...)
	if err != nil {
		cancel()
		cc.Close()
		return nil, err
	}
	return &grpcLink{cc: cc, stream: stream, cancel: cancel}, nil
}

func (l *grpcLink) write(b []byte) error {
	for len(b) > 0 {
		size := int(b[0])<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3])
		m, err := grpcframe.Client(b[4], b[5:4+size])
		if err != nil {
			return err
		}
		if err := l.stream.Send(m); err != nil {
			return err
		}
		b = b[4+size:]
	}
	return nil
}

func (l *grpcLink) send(typ byte, body []byte) error {
	return l.write(protocol.AppendFrame(nil, typ, body))
}

func (l *grpcLink) read() (byte, []byte, error) {
	m, err := l.stream.Recv()
	if err != nil {
		return 0, nil, err
	}
	return grpcframe.FromServer(m)
}

func (l *grpcLink) buffered() bool { return false }

func (l *grpcLink) close() {
	l.once.Do(func() {
		l.cancel()
		l.cc.Close()
	})
}

// deviceAddr is where a device of transport connects to on a server.
func deviceAddr(a socketserver.Addrs, transport string) string {
	if transport == "grpc" {
		return a.GRPC
	}
	return a.TCP
}
