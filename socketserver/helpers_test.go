package socketserver_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/poll"
	"github.com/socketcluster/socketcluster/internal/servertest"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"github.com/golang-jwt/jwt/v5"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

var testKey = []byte("device-key-for-tests-0123456789abcdef")

func token(device string, exp time.Duration) string {
	claims := jwt.MapClaims{"sub": device}
	if exp != 0 {
		claims["exp"] = time.Now().Add(exp).Unix()
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(testKey)
	if err != nil {
		panic(err)
	}
	return s
}

// startServer runs an in-process server on loopback ports until the test ends.
func startServer(t testing.TB, st store.Store, name string, mod func(*socketserver.Config)) *socketserver.Server {
	t.Helper()
	cfg := socketserver.Config{TCPAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		ServerName: name, AuthKey: testKey, DrainJitter: 50 * time.Millisecond, DrainTimeout: 5 * time.Second, InsecureNoAPIAuth: true}
	if mod != nil {
		mod(&cfg)
	}
	var log logr.Logger = logr.Discard()
	if tt, ok := t.(*testing.T); ok && testing.Verbose() {
		log = testr.New(tt)
	}
	return servertest.Start(t, cfg, st, log)
}

func redisStore(t testing.TB, r *redistest.Server) store.Store {
	return store.NewRedis(r.Client(), "t")
}

// rawConn is a device speaking protocol v1 over raw TCP, byte by byte as the
// contract says, so that the server is tested against the wire and not
// against its own client library.
type rawConn struct {
	t  testing.TB
	nc net.Conn
	r  *protocol.Reader
}

func dial(t testing.TB, addr string) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawConn{t: t, nc: nc, r: protocol.NewReader(nc, 1<<20, 4096)}
}

func (c *rawConn) send(typ byte, body []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(protocol.AppendFrame(nil, typ, body)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawConn) sendRaw(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawConn) hello(device string, lastSeq uint64) {
	c.send(protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: device, Token: token(device, time.Hour), LastSeq: lastSeq}))
}

type frame struct {
	typ  byte
	body []byte
}

func (f frame) String() string { return protocol.TypeName(f.typ) + " " + string(f.body) }

func (c *rawConn) read() (frame, error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, body, err := c.r.ReadFrame()
	return frame{typ, bytes.Clone(body)}, err
}

func (c *rawConn) expect(typ byte) frame {
	c.t.Helper()
	f, err := c.read()
	if err != nil {
		c.t.Fatalf("waiting for %s: %v", protocol.TypeName(typ), err)
	}
	if f.typ != typ {
		c.t.Fatalf("got %v, want %s", f, protocol.TypeName(typ))
	}
	return f
}

func (c *rawConn) welcome(device string, lastSeq uint64) protocol.Welcome {
	c.t.Helper()
	c.hello(device, lastSeq)
	var w protocol.Welcome
	if err := json.Unmarshal(c.expect(protocol.TypeWelcome).body, &w); err != nil {
		c.t.Fatal(err)
	}
	return w
}

// expectError reads an ERROR with code and then the close.
func (c *rawConn) expectError(code protocol.Code) protocol.ErrorBody {
	c.t.Helper()
	f := c.expect(protocol.TypeError)
	var e protocol.ErrorBody
	if err := json.Unmarshal(f.body, &e); err != nil || e.Code != code {
		c.t.Fatalf("ERROR %s, want %s (%v)", f.body, code, err)
	}
	if f, err := c.read(); err == nil {
		c.t.Fatalf("frame after ERROR: %v", f)
	}
	return e
}

func (c *rawConn) deliver() (uint64, string) {
	c.t.Helper()
	f := c.expect(protocol.TypeDeliver)
	seq, p, err := protocol.ParseSeq(f.body)
	if err != nil {
		c.t.Fatal(err)
	}
	return seq, string(p)
}

func (c *rawConn) ack(seq uint64) {
	c.send(protocol.TypeAck, binary.BigEndian.AppendUint64(nil, seq))
}

// ackStored ACKs seq and waits until the store has applied it.
func (c *rawConn) ackStored(srv target, device string, seq uint64) {
	c.t.Helper()
	c.ack(seq)
	eventually(c.t, "ack stored", func() bool { return deviceInfo(c.t, srv, device).AckedSeq == seq })
}

func (c *rawConn) publish(id uint64, payload string) {
	c.send(protocol.TypePublish, append(binary.BigEndian.AppendUint64(nil, id), payload...))
}

// target is a server reachable by address: in process or a child process.
type target interface{ Addrs() socketserver.Addrs }

// api calls the admin API of srv.
func api(t testing.TB, srv target, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+srv.Addrs().Admin+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// adminClient is a backend of srv's admin API (token: the API's, if any).
func adminClient(srv target, token string) *adminapi.Client {
	return &adminapi.Client{BaseURL: srv.Addrs().Admin, Token: token, HTTP: &http.Client{Timeout: 30 * time.Second}}
}

func send(t testing.TB, srv target, device, payload string) uint64 {
	t.Helper()
	r, err := adminClient(srv, "").Send(context.Background(), device, []byte(payload), "")
	if err != nil {
		t.Fatalf("POST message: %v", err)
	}
	return r.Seq
}

func deviceInfo(t testing.TB, srv target, device string) adminapi.DeviceInfo {
	t.Helper()
	d, err := adminClient(srv, "").Device(context.Background(), device)
	if err != nil {
		t.Fatalf("GET device: %v", err)
	}
	return d
}

// eventually polls cond until it holds or 30 s pass (generous: CI runs
// the race detector on two cores next to other suites).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 30*time.Second, what, poll.True(cond))
}

// startScript runs a device program on a client stack no one here wrote
// (Paho, Node's HTTP/2), its stderr on the test's, for at most a minute:
// the test drives it on stdin and reads its events on stdout. At the end
// its stdin is closed, which ends it.
func startScript(t *testing.T, name string, args ...string) (io.WriteCloser, io.Reader) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = cmd.Wait(); cancel() })
	return stdin, stdout
}
