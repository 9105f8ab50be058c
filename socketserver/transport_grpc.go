package socketserver

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/socketcluster/socketcluster/socketserver/grpcframe"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/scpv1"
)

// A device's scp.v1.Device/Connect call, served on its HTTP/2 connection
// without grpc-go: the read loop reads HTTP/2 frames like any codec reads
// its framing, answers the connection's own frames (SETTINGS, PING,
// WINDOW_UPDATE) and returns the protocol frames of the call's ClientFrame
// messages; the writer's frames go out as ServerFrame messages in DATA
// frames, paced by the device's flow-control windows. So an idle device
// parks in the poller and holds no goroutine, as over TCP. One call per
// connection: further calls end at once with UNIMPLEMENTED.

type grpcTransport struct {
	r      *protocol.H2Reader
	src    *replayConn // what the handshake read past the call's headers; nil: none
	out    *writer
	stream uint32
	token  string // of the call's authorization header, until the HELLO

	// Read loop only.
	max        int     // the frame limit, as in the other codecs
	num        [8]byte // body of the last ACK
	data       []byte  // the unread part of the call's current DATA
	msg        []byte  // a message that spans DATA frames, as it arrives
	ended      bool    // the device ended the call or the connection
	skipBlock  bool    // in the header block of a refused call
	window     int     // the receive window announced for the call and connection
	recvConn   int     // bytes received and not yet given back to the device
	recvStream int
	lastPing   int64 // unix ns
	strikes    int
	minPing    time.Duration

	// dataSent: a DATA frame went out since the last PING (grpc-go then
	// forgives a device's earlier pings, as it answers data with them).
	dataSent atomic.Bool
	// calm: the device pinged too often; its GOAWAY says so (read by
	// whoever closes the connection).
	calm atomic.Bool

	// The device's windows, taken by the writer and given back by the
	// read loop's WINDOW_UPDATEs.
	fmu        sync.Mutex
	fcond      sync.Cond
	sendConn   int64
	sendStream int64
	initWindow int64 // the stream's initial window the device announced last
	fclosed    bool
}

func newGRPCTransport(st *h2Start, nc net.Conn, maxFrame int, out *writer) *grpcTransport {
	srv := out.c.srv
	t := &grpcTransport{out: out, stream: st.stream, token: st.token, max: maxFrame,
		window: srv.grpcWindow(), minPing: srv.grpcMinPing(),
		sendConn: st.connWindow, sendStream: st.streamWindow, initWindow: st.streamWindow}
	t.fcond.L = &t.fmu
	var rd io.Reader = nc
	if len(st.rest) > 0 {
		// A copy: the handshake's buffer is not kept for these few bytes.
		t.src = &replayConn{Conn: nc, head: bytes.NewReader(bytes.Clone(st.rest))}
		rd = t.src
	}
	t.r = protocol.NewH2Reader(rd, readBufferSize)
	return t
}

func (*grpcTransport) name() string { return grpcName }

func (t *grpcTransport) rawConn(nc net.Conn) (syscall.RawConn, bool) { return socketRawConn(nc) }

func (t *grpcTransport) Buffered() bool {
	return len(t.data) > 0 || t.r.Buffered() || t.src != nil && t.src.head.Len() > 0
}

func (t *grpcTransport) Release()          { t.r.Release() }
func (t *grpcTransport) SetMaxFrame(n int) { t.max = n }

var errGRPCCallEnded = errors.New("the device ended its gRPC call")

// ReadFrame returns the next frame of the call, or TypeNone once it
// answered the connection's frames and nothing more is read.
func (t *grpcTransport) ReadFrame() (byte, []byte, error) {
	for {
		if m, ok, err := t.message(); err != nil || ok {
			if err != nil {
				return 0, nil, err
			}
			var cf scpv1.ClientFrame
			if err := proto.Unmarshal(m, &cf); err != nil {
				return 0, nil, protocol.Errorf(protocol.CodeBadFrame, "ClientFrame does not parse")
			}
			typ, body, err := clientFrame(&cf, &t.num, t.token, t.max, nil)
			if typ == protocol.TypeHello {
				t.token = "" // the JWT is not kept for the connection's life
			}
			return typ, body, err
		}
		if t.ended {
			return 0, nil, errGRPCCallEnded
		}
		f, err := t.r.ReadFrame()
		if err != nil {
			t.closeFlow()
			return 0, nil, err
		}
		if err := t.frame(f); err != nil {
			return 0, nil, err
		}
		if len(t.data) == 0 && !t.ended && !t.Buffered() {
			return protocol.TypeNone, nil, nil
		}
	}
}

// message takes the next whole gRPC message of the call from what DATA
// brought (a length prefix of 5 bytes, then the message); one that spans
// frames is gathered in msg as its bytes arrive, never at its declared size.
func (t *grpcTransport) message() ([]byte, bool, error) {
	if t.msg == nil && len(t.data) >= 5 {
		n, err := t.prefix(t.data)
		if err != nil {
			return nil, false, err
		}
		if n <= len(t.data)-5 {
			m := t.data[5 : 5+n]
			t.data = t.data[5+n:]
			return m, true, nil
		}
	}
	if len(t.data) == 0 {
		return nil, false, nil
	}
	if len(t.msg) < 5 {
		k := min(5-len(t.msg), len(t.data))
		t.msg = append(t.msg, t.data[:k]...)
		t.data = t.data[k:]
		if len(t.msg) < 5 {
			return nil, false, nil
		}
	}
	n, err := t.prefix(t.msg)
	if err != nil {
		return nil, false, err
	}
	k := min(5+n-len(t.msg), len(t.data))
	t.msg = append(t.msg, t.data[:k]...)
	t.data = t.data[k:]
	if len(t.msg) < 5+n {
		return nil, false, nil
	}
	m := t.msg[5:]
	t.msg = nil
	return m, true, nil
}

// prefix checks a message's length prefix against the frame limit.
func (t *grpcTransport) prefix(p []byte) (int, error) {
	if p[0] != 0 {
		return 0, protocol.Errorf(protocol.CodeBadFrame, "compressed gRPC messages are not accepted")
	}
	n := binary.BigEndian.Uint32(p[1:5])
	if int64(n) > int64(t.max+grpcOverhead) {
		return 0, protocol.Errorf(protocol.CodeFrameTooLarge, "gRPC message of %d bytes exceeds %d", n, t.max+grpcOverhead)
	}
	return int(n), nil
}

// frame takes one HTTP/2 frame.
func (t *grpcTransport) frame(f protocol.H2Frame) error {
	p := f.Payload
	if t.skipBlock && f.Type != protocol.H2Continuation {
		return protocol.Errorf(protocol.CodeBadFrame, "HTTP/2 header block interrupted")
	}
	switch f.Type {
	case protocol.H2Data:
		t.recvConn += len(p)
		if f.Stream == t.stream && !t.ended {
			t.recvStream += len(p)
			data, err := protocol.H2Unpad(f.Flags, p)
			if err != nil {
				return err
			}
			t.data = data
			t.ended = f.Flags&protocol.H2FlagEndStream != 0
		}
		t.giveBack()
	case protocol.H2Headers:
		if f.Stream == t.stream {
			t.ended = t.ended || f.Flags&protocol.H2FlagEndStream != 0
			return nil
		}
		// Another call: refused without reading its headers (the server
		// keeps no HPACK state; it never reads another header block).
		t.skipBlock = f.Flags&protocol.H2FlagEndHeaders == 0
		stream := f.Stream
		t.out.write(func(dst []byte) []byte {
			dst = protocol.AppendH2Header(dst, len(grpcRefused), protocol.H2Headers, protocol.H2FlagEndHeaders|protocol.H2FlagEndStream, stream)
			return append(dst, grpcRefused...)
		})
	case protocol.H2Continuation:
		t.skipBlock = t.skipBlock && f.Flags&protocol.H2FlagEndHeaders == 0
	case protocol.H2RSTStream:
		t.ended = t.ended || f.Stream == t.stream
	case protocol.H2GoAway:
		t.ended = true
	case protocol.H2Settings:
		if f.Flags&protocol.H2FlagAck != 0 {
			return nil
		}
		v, ok, err := protocol.H2InitialWindow(p)
		if err != nil || f.Stream != 0 {
			return protocol.Errorf(protocol.CodeBadFrame, "HTTP/2 SETTINGS malformed")
		}
		if ok {
			t.setStreamWindow(v)
		}
		t.out.write(func(dst []byte) []byte {
			return protocol.AppendH2Header(dst, 0, protocol.H2Settings, protocol.H2FlagAck, 0)
		})
	case protocol.H2Ping:
		if f.Flags&protocol.H2FlagAck != 0 {
			return nil
		}
		if len(p) != 8 {
			return protocol.Errorf(protocol.CodeBadFrame, "HTTP/2 PING of %d bytes", len(p))
		}
		if err := t.pinged(); err != nil {
			return err
		}
		data := [8]byte(p)
		t.out.write(func(dst []byte) []byte {
			return append(protocol.AppendH2Header(dst, 8, protocol.H2Ping, protocol.H2FlagAck, 0), data[:]...)
		})
	case protocol.H2WindowUpdate:
		if len(p) != 4 {
			return protocol.Errorf(protocol.CodeBadFrame, "HTTP/2 WINDOW_UPDATE malformed")
		}
		t.grant(f.Stream, int64(binary.BigEndian.Uint32(p)&0x7fffffff))
	}
	return nil // PRIORITY, unknown types
}

// giveBack returns received bytes to the device's windows once half of
// one is used: the call's bytes are taken as they are read.
func (t *grpcTransport) giveBack() {
	conn, stream := 0, 0
	if t.recvConn >= t.window/2 {
		conn, t.recvConn = t.recvConn, 0
	}
	if t.recvStream >= t.window/2 {
		stream, t.recvStream = t.recvStream, 0
	}
	if conn == 0 && stream == 0 {
		return
	}
	id := t.stream
	t.out.write(func(dst []byte) []byte {
		if conn > 0 {
			dst = appendWindowUpdate(dst, 0, conn)
		}
		if stream > 0 {
			dst = appendWindowUpdate(dst, id, stream)
		}
		return dst
	})
}

// pinged enforces grpc-go's keepalive policy: pings more often than
// minPing, more than twice in a row with no data sent between them, end
// the connection with ENHANCE_YOUR_CALM (clients then ping less).
func (t *grpcTransport) pinged() error {
	if t.dataSent.Swap(false) {
		t.strikes = 0
	}
	now := time.Now().UnixNano()
	if t.lastPing != 0 && time.Duration(now-t.lastPing) < t.minPing {
		if t.strikes++; t.strikes > 2 {
			t.calm.Store(true)
			return protocol.Errorf(protocol.CodeBadFrame, "HTTP/2 pings more often than every %s", t.minPing)
		}
	}
	t.lastPing = now
	return nil
}

// The device's windows.

func (t *grpcTransport) grant(stream uint32, n int64) {
	t.fmu.Lock()
	switch stream {
	case 0:
		t.sendConn += n
	case t.stream:
		t.sendStream += n
	}
	t.fmu.Unlock()
	t.fcond.Broadcast()
}

func (t *grpcTransport) setStreamWindow(initial int64) {
	// A new initial window moves the open stream's by the difference
	// (RFC 9113, 6.9.2).
	t.fmu.Lock()
	t.sendStream += initial - t.initWindow
	t.initWindow = initial
	t.fmu.Unlock()
	t.fcond.Broadcast()
}

func (t *grpcTransport) closeFlow() {
	t.fmu.Lock()
	t.fclosed = true
	t.fmu.Unlock()
	t.fcond.Broadcast()
}

var errFlowClosed = errors.New("gRPC connection closed while its window was shut")

// writeFlow writes b, whole HTTP/2 frames, as far as the device's windows
// let the DATA frames go, and waits for WINDOW_UPDATEs for the rest until
// deadline. Only the writer calls it.
func (t *grpcTransport) writeFlow(nc net.Conn, b []byte, deadline time.Time) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for len(b) > 0 {
		t.fmu.Lock()
		i, need := 0, int64(0)
		for i < len(b) {
			n, typ, _, _ := protocol.ParseH2Header(b[i:])
			if typ == protocol.H2Data && need+int64(n) > min(t.sendConn, t.sendStream) {
				break
			}
			if typ == protocol.H2Data {
				need += int64(n)
			}
			i += protocol.H2HeaderLen + n
		}
		if i == 0 {
			switch {
			case t.fclosed:
				t.fmu.Unlock()
				return errFlowClosed
			case !time.Now().Before(deadline):
				t.fmu.Unlock()
				return os.ErrDeadlineExceeded
			}
			if timer == nil {
				timer = time.AfterFunc(time.Until(deadline), func() {
					t.fmu.Lock() // not between the waiter's check and its Wait
					t.fcond.Broadcast()
					t.fmu.Unlock()
				})
			}
			t.fcond.Wait()
			t.fmu.Unlock()
			continue
		}
		t.sendConn -= need
		t.sendStream -= need
		t.fmu.Unlock()
		if _, err := nc.Write(b[:i]); err != nil {
			return err
		}
		b = b[i:]
	}
	return nil
}

// Output: each frame is one ServerFrame message in DATA frames of the call.

func (t *grpcTransport) AppendFrame(dst []byte, typ byte, body []byte) []byte {
	m, err := grpcframe.Server(typ, body)
	if err != nil {
		panic(err) // the server builds its frames; a bad one is a bug
	}
	start := len(dst)
	dst, _ = proto.MarshalOptions{}.MarshalAppend(append(dst, grpcDataHead[:]...), m)
	return t.frameMessage(dst, start)
}

func (t *grpcTransport) AppendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	if typ != protocol.TypeDeliver {
		return t.AppendFrame(dst, typ, append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(payload)), n), payload...))
	}
	start := len(dst)
	dst = grpcframe.AppendDeliver(append(dst, grpcDataHead[:]...), n, payload)
	return t.frameMessage(dst, start)
}

// grpcDataHead is the room for a DATA frame's header and a message's
// length prefix, filled in by frameMessage once the message is encoded.
var grpcDataHead [protocol.H2HeaderLen + 5]byte

// frameMessage turns dst[start:], room for a DATA header and a prefix
// followed by a message, into the message's DATA frames.
func (t *grpcTransport) frameMessage(dst []byte, start int) []byte {
	t.dataSent.Store(true)
	n := len(dst) - start - len(grpcDataHead)
	if 5+n <= protocol.H2MaxFrame {
		protocol.AppendH2Header(dst[start:start], 5+n, protocol.H2Data, 0, t.stream)
		dst[start+protocol.H2HeaderLen] = 0
		binary.BigEndian.PutUint32(dst[start+protocol.H2HeaderLen+1:], uint32(n))
		return dst
	}
	msg := binary.BigEndian.AppendUint32([]byte{0}, uint32(n))
	msg = append(msg, dst[start+len(grpcDataHead):]...)
	dst = dst[:start]
	for chunk := range slices.Chunk(msg, protocol.H2MaxFrame) {
		dst = append(protocol.AppendH2Header(dst, len(chunk), protocol.H2Data, 0, t.stream), chunk...)
	}
	return dst
}

func (t *grpcTransport) appendClose(dst []byte) []byte { return dst }

// appendEnd ends the call with status OK and the connection with GOAWAY,
// whatever closes it: the device's gRPC stack reports a finished call
// (the ERROR or GOAWAY frame before it says why), not a failure.
func (t *grpcTransport) appendEnd(dst []byte) []byte {
	dst = protocol.AppendH2Header(dst, len(grpcTrailersOK), protocol.H2Headers,
		protocol.H2FlagEndHeaders|protocol.H2FlagEndStream, t.stream)
	dst = append(dst, grpcTrailersOK...)
	if t.calm.Load() {
		return appendGoAway(dst, t.stream, protocol.H2EnhanceYourCalm, "too_many_pings")
	}
	return appendGoAway(dst, t.stream, protocol.H2NoError, "")
}
