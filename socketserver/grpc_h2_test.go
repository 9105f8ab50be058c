package socketserver_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/grpcframe"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/scpv1"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// h2Device is a gRPC device written with x/net/http2's framer and HPACK
// coder, frame by frame and without goroutines: the wire cases grpc-go's
// client never produces, and a device whose connection holds nothing in
// the test process.
type h2Device struct {
	t      *testing.T
	nc     net.Conn
	fr     *http2.Framer
	stream uint32
	// lastData is the size of the last DATA frame read.
	lastData int
}

// dialH2 opens a connection and the Connect call with settings (none: the defaults).
func dialH2(t *testing.T, addr string, settings ...http2.Setting) *h2Device {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	d := &h2Device{t: t, nc: nc, fr: http2.NewFramer(nc, nc), stream: 1}
	d.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	d.check(d.fr.WriteSettings(settings...))
	d.call(d.stream, "/scp.v1.Device/Connect")
	return d
}

func (d *h2Device) check(err error) {
	d.t.Helper()
	if err != nil {
		d.t.Fatal(err)
	}
}

// call sends a call's headers on stream.
func (d *h2Device) call(stream uint32, path string) {
	d.t.Helper()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", path},
		{":authority", "x"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		d.check(enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}))
	}
	d.check(d.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: block.Bytes(), EndHeaders: true}))
}

// message is a frame as a gRPC message: prefix and ClientFrame.
func message(t *testing.T, typ byte, body []byte) []byte {
	t.Helper()
	m, err := grpcframe.Client(typ, body)
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(b))), b...)
}

// send sends the gRPC message of a frame in DATA frames of the given sizes
// (the rest in the last).
func (d *h2Device) send(typ byte, body []byte, cuts ...int) {
	d.t.Helper()
	msg := message(d.t, typ, body)
	for _, n := range cuts {
		d.check(d.fr.WriteData(d.stream, false, msg[:n]))
		msg = msg[n:]
	}
	d.check(d.fr.WriteData(d.stream, false, msg))
}

// next reads frames until a protocol frame of the call, answering the
// server's SETTINGS; other frames go to other.
func (d *h2Device) next(other func(http2.Frame)) (byte, []byte) {
	d.t.Helper()
	_ = d.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := d.fr.ReadFrame()
		if err != nil {
			d.t.Fatalf("reading: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				d.check(d.fr.WriteSettingsAck())
			}
			continue
		case *http2.DataFrame:
			if f.StreamID == d.stream && len(f.Data()) > 0 {
				p := f.Data()
				d.lastData = len(p)
				if n := binary.BigEndian.Uint32(p[1:5]); int(n) != len(p)-5 {
					d.t.Fatalf("a message of %d bytes in a DATA frame of %d", n, len(p))
				}
				var m scpv1.ServerFrame
				d.check(proto.Unmarshal(p[5:], &m))
				typ, body, err := grpcframe.FromServer(&m)
				d.check(err)
				return typ, body
			}
		}
		if other == nil {
			d.t.Fatalf("unexpected %v", f.Header())
		}
		other(f)
	}
}

func (d *h2Device) expect(typ byte) []byte {
	d.t.Helper()
	got, body := d.next(func(http2.Frame) {}) // the response headers, window updates
	if got != typ {
		d.t.Fatalf("got %s %s, want %s", protocol.TypeName(got), body, protocol.TypeName(typ))
	}
	return body
}

func (d *h2Device) welcome(device string) {
	d.t.Helper()
	d.send(protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: device, Token: token(device, time.Hour)}))
	d.expect(protocol.TypeWelcome)
}

// end reads until the call's trailers and the connection's GOAWAY.
func (d *h2Device) end() (status string, goAway http2.ErrCode, debug string) {
	d.t.Helper()
	_ = d.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := d.fr.ReadFrame()
		if err != nil {
			d.t.Fatalf("reading to the end: %v (trailers %q)", err, status)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == d.stream && f.StreamEnded() {
				status = f.PseudoValue("status") + "/" + headerValue(f, "grpc-status")
			}
		case *http2.GoAwayFrame:
			return status, f.ErrCode, string(f.DebugData())
		}
	}
}

func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, h := range f.RegularFields() {
		if h.Name == name {
			return h.Value
		}
	}
	return ""
}

// The gRPC wire as grpc-go's client never writes it: a message cut across
// DATA frames (its length prefix too), a second call on the connection, a
// device window smaller than one message, too many pings, and the end of
// the call.
func TestGRPCWire(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.HeartbeatInterval = 10 * time.Second
		c.HeartbeatTimeout = 30 * time.Second
	})
	addr := srv.Addrs().GRPC

	t.Run("message across DATA frames", func(t *testing.T) {
		d := dialH2(t, addr)
		d.send(protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "w1", Token: token("w1", time.Hour)}), 3, 40)
		d.expect(protocol.TypeWelcome)
		d.send(protocol.TypePing, []byte("cut"), 2)
		if b := d.expect(protocol.TypePong); string(b) != "cut" {
			t.Fatalf("PONG %q", b)
		}
		// The device ends its call: trailers with status OK, then GOAWAY.
		d.check(d.fr.WriteData(d.stream, true, nil))
		if st, code, _ := d.end(); st != "/0" || code != http2.ErrCodeNo {
			t.Fatalf("end of the call: trailers %q, GOAWAY %v", st, code)
		}
	})

	t.Run("one call per connection", func(t *testing.T) {
		d := dialH2(t, addr)
		d.welcome("w2")
		d.call(3, "/grpc.health.v1.Health/Check")
		var refused string
		d.send(protocol.TypePing, []byte("still"))
		if b, _ := d.next(func(f http2.Frame) {
			if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == 3 && h.StreamEnded() {
				refused = headerValue(h, "grpc-status")
			}
		}); b != protocol.TypePong {
			t.Fatalf("got %s, want PONG", protocol.TypeName(b))
		}
		if refused != "12" {
			t.Fatalf("second call ended with grpc-status %q, want 12 (UNIMPLEMENTED)", refused)
		}
	})

	t.Run("device window", func(t *testing.T) {
		// A window of 40 bytes takes one DELIVER of 20 at a time (31
		// bytes of DATA): the next waits for the device's WINDOW_UPDATE.
		// The window is set after the WELCOME, by a new initial window
		// that moves the open stream's.
		d := dialH2(t, addr)
		d.welcome("w3")
		d.check(d.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(d.lastData + 40)}))
		var want []string
		for i := range 3 {
			p := fmt.Sprintf("%020d", i)
			want = append(want, fmt.Sprintf("%d:%s", send(t, srv, "w3", p), p))
		}
		var got []string
		deliver := func() {
			seq, p, err := protocol.ParseSeq(d.expect(protocol.TypeDeliver))
			d.check(err)
			got = append(got, fmt.Sprintf("%d:%s", seq, p))
		}
		deliver()
		_ = d.nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if f, err := d.fr.ReadFrame(); err == nil {
			t.Fatalf("beyond the window: %v", f.Header())
		} else if ne := (net.Error)(nil); !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatal(err)
		}
		for range 2 {
			d.check(d.fr.WriteWindowUpdate(d.stream, 40))
			deliver()
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("deliveries %v, want %v", got, want)
		}
	})

	t.Run("too many pings", func(t *testing.T) {
		d := dialH2(t, addr)
		d.welcome("w4")
		for i := range 4 {
			d.check(d.fr.WritePing(false, [8]byte{byte(i)}))
		}
		var e protocol.ErrorBody
		if err := json.Unmarshal(d.expect(protocol.TypeError), &e); err != nil || e.Code != protocol.CodeBadFrame {
			t.Fatalf("ERROR %+v %v", e, err)
		}
		if st, code, debug := d.end(); st != "/0" || code != http2.ErrCodeEnhanceYourCalm || debug != "too_many_pings" {
			t.Fatalf("trailers %q, GOAWAY %v %q", st, code, debug)
		}
	})
}

// A device on Node's own HTTP/2 client (nghttp2, testdata/grpc_node_http2.mjs):
// the token from the call's metadata, a backlog of 200 KiB that takes
// more than the device's 64 KiB windows (nghttp2 opens them as it reads),
// ACKs, a PUBLISH and its PUBACK, and the call's end with status OK.
func TestGRPCNodeHTTP2(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skip("no node on PATH; with CI set this is a failure")
		}
		t.Fatal("no node on PATH")
	}
	st := store.NewMemory()
	srv := startServer(t, st, "pod-a", nil)
	const device = "node-1"
	want := map[uint64]string{}
	for i := range 100 {
		p := fmt.Sprintf("%04d%s", i, bytes.Repeat([]byte("x"), 2044))
		want[send(t, srv, device, p)] = p
	}
	stdin, stdout := startScript(t, node, "testdata/grpc_node_http2.mjs", srv.Addrs().GRPC, device, token(device, time.Hour))
	type event struct{ Event, Seq, Payload, ID, Status, Code, Message string }
	events := json.NewDecoder(stdout)
	next := func() event {
		t.Helper()
		var e event
		if err := events.Decode(&e); err != nil {
			t.Fatalf("node: %v", err)
		}
		if e.Event == "error" {
			t.Fatalf("node: %+v", e)
		}
		return e
	}
	if e := next(); e.Event != "welcome" {
		t.Fatalf("got %+v, want the welcome", e)
	}
	var last uint64
	for range want {
		e := next()
		seq, _ := strconv.ParseUint(e.Seq, 10, 64)
		if e.Event != "deliver" || seq <= last || want[seq] != e.Payload {
			t.Fatalf("got %+v after seq %d", e, last)
		}
		last = seq
	}
	fmt.Fprintln(stdin, "pub 1 hello-from-node")
	if e := next(); e.Event != "puback" || e.ID != "1" {
		t.Fatalf("got %+v, want PUBACK 1", e)
	}
	if page := st.ReadUpstream(0, 10); len(page) != 1 || page[0].Device != device || string(page[0].Payload) != "hello-from-node" {
		t.Fatalf("upstream: %+v", page)
	}
	eventually(t, "every delivery acknowledged", func() bool {
		code, body := api(t, srv, "GET", "/v1/devices/"+device, "")
		return code == 200 && strings.Contains(body, `"pending":0`)
	})
	fmt.Fprintln(stdin, "end")
	if e := next(); e.Event != "end" || e.Status != "0" {
		t.Fatalf("got %+v, want the end of the call with status 0", e)
	}
}

// The --max-handshakes slot covers a gRPC connection up to its preface:
// a client that has not sent its first call yet (gRPC clients wait for
// the connection to be ready) does not hold up the next ones.
func TestGRPCWaitingForACallHoldsNoSlot(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.MaxHandshakes = 1
		c.HandshakeTimeout = time.Minute
	})
	nc, err := net.Dial("tcp", srv.Addrs().GRPC)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if f, err := http2.NewFramer(nil, nc).ReadFrame(); err != nil || f.Header().Type != http2.FrameSettings {
		t.Fatalf("server preface: %v %v", f, err)
	}
	dialH2(t, srv.Addrs().GRPC).welcome("next")
}
