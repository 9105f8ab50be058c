package socketserver_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/go-logr/logr"
	"github.com/gobwas/ws"

	"github.com/socketcluster/socketcluster/internal/testcert"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// rawWS is a WebSocket client written byte by byte: the upgrade request by
// hand, frames built and parsed here, so that the server can be sent what
// no real client library would send.
type rawWS struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

func upgradeRequest(host string) string {
	return "GET /ws HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Protocol: " + protocol.Subprotocol + "\r\n\r\n"
}

// wsRequest sends the upgrade request on a new connection and returns the
// server's HTTP answer.
func wsRequest(t testing.TB, addr string) (*rawWS, *http.Response) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &rawWS{t: t, nc: nc, br: bufio.NewReader(nc)}
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(nc, upgradeRequest(addr)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	return c, resp
}

func rawWSDial(t testing.TB, addr string) *rawWS {
	t.Helper()
	c, resp := wsRequest(t, addr)
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("upgrade answered %s %v", resp.Status, resp.Header)
	}
	return c
}

func (c *rawWS) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawWS) send(typ byte, body []byte) { c.write(protocol.AppendWSFrame(nil, typ, body, true)) }

// next reads one frame of the server (which must not mask).
func (c *rawWS) next() (op byte, payload []byte, err error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 || h[0]&0x70 != 0 || h[1]&0x80 != 0 {
		return 0, nil, fmt.Errorf("server frame header %08b %08b: want FIN, no RSV, unmasked", h[0], h[1])
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		_, err = io.ReadFull(c.br, l[:])
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		_, err = io.ReadFull(c.br, l[:])
		n = binary.BigEndian.Uint64(l[:])
	}
	if err != nil {
		return 0, nil, err
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(c.br, payload)
	return h[0] & 0x0f, payload, err
}

func (c *rawWS) expect(typ byte) []byte {
	c.t.Helper()
	op, p, err := c.next()
	if err != nil || op != 0x2 || len(p) == 0 || p[0] != typ {
		c.t.Fatalf("got opcode %d %q (%v), want %s", op, p, err, protocol.TypeName(typ))
	}
	return p[1:]
}

func (c *rawWS) welcome(device string) {
	c.t.Helper()
	c.send(protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: device, Token: token(device, time.Hour)}))
	c.expect(protocol.TypeWelcome)
}

// expectClose reads what the server sends until its close frame: at most
// an ERROR with code, then a close with status.
func (c *rawWS) expectClose(code protocol.Code, status uint16) {
	c.t.Helper()
	for {
		op, p, err := c.next()
		if err != nil {
			c.t.Fatalf("waiting for a close frame: %v", err)
		}
		switch {
		case op == 0x8:
			if len(p) < 2 || binary.BigEndian.Uint16(p) != status {
				c.t.Fatalf("close frame %v, want status %d", p, status)
			}
			return
		case op == 0x2 && len(p) > 0 && p[0] == protocol.TypeError:
			var e protocol.ErrorBody
			if err := json.Unmarshal(p[1:], &e); err != nil || e.Code != code {
				c.t.Fatalf("ERROR %s, want %s", p[1:], code)
			}
		default:
			c.t.Fatalf("got opcode %d %q before the close, want at most ERROR %s", op, p, code)
		}
	}
}

// Before WELCOME a frame may not exceed 8 KiB, whatever --max-frame-bytes
// says; after WELCOME the configured limit holds.
func TestFrameLimitBeforeWelcome(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil) // max frame 64 KiB
	publish := func(n int) []byte { return append(binary.BigEndian.AppendUint64(nil, 1), make([]byte, n)...) }
	atLimit := publish(protocol.MaxFrameBeforeWelcome - 1 - 8) // type byte + body = 8192
	t.Run("tcp", func(t *testing.T) {
		c := dial(t, srv.Addrs().TCP)
		c.sendRaw(binary.BigEndian.AppendUint32(nil, protocol.MaxFrameBeforeWelcome+1)) // the header alone
		c.expectError(protocol.CodeFrameTooLarge)
		c = dial(t, srv.Addrs().TCP)
		c.send(protocol.TypePublish, atLimit)
		c.expectError(protocol.CodeHelloRequired) // passed the framing check
		c = dial(t, srv.Addrs().TCP)
		c.welcome("limit-tcp", 0)
		c.send(protocol.TypePublish, publish(20000))
		c.expect(protocol.TypePubAck)
	})
	t.Run("websocket", func(t *testing.T) {
		// The header alone: the server refuses from it, reading no body
		// (a body it leaves unread would make its close a reset).
		raw := rawWSDial(t, srv.Addrs().WS)
		hdr, _ := protocol.AppendWSHeader(nil, ws.OpBinary, protocol.MaxFrameBeforeWelcome+1, true)
		raw.write(hdr)
		var e protocol.ErrorBody
		if err := json.Unmarshal(raw.expect(protocol.TypeError), &e); err != nil || e.Code != protocol.CodeFrameTooLarge {
			t.Fatalf("ERROR %+v %v, want %s", e, err, protocol.CodeFrameTooLarge)
		}
		c := wsDial(t, srv, protocol.Subprotocol)
		wsSend(t, c, protocol.TypePublish, atLimit)
		wsExpectError(t, c, protocol.CodeHelloRequired)
		c = wsDial(t, srv, protocol.Subprotocol)
		wsSend(t, c, protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "limit-ws", Token: token("limit-ws", time.Hour)}))
		if typ, body := wsRead(t, c); typ != protocol.TypeWelcome {
			t.Fatalf("got %s %s, want WELCOME", protocol.TypeName(typ), body)
		}
		wsSend(t, c, protocol.TypePublish, publish(20000))
		if typ, _ := wsRead(t, c); typ != protocol.TypePubAck {
			t.Fatalf("got %s, want PUBACK", protocol.TypeName(typ))
		}
	})
}

// readLoopsInBody counts connection read loops that have read a frame's
// header and now wait for its body.
func readLoopsInBody(ws bool) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "(*conn).readLoop") {
			continue
		}
		if ws && strings.Contains(g, "(*WSReader).ReadFrame") && !strings.Contains(g, "readHeader") ||
			!ws && strings.Contains(g, "(*Reader).ReadFrame") && !strings.Contains(g, "(*window).fill") {
			count++
		}
	}
	return count
}

// A welcomed device that announces a 4 MiB frame and sends 10 bytes of it
// makes the server hold about those bytes, not 4 MiB.
func TestAnnouncedFrameHoldsLittleMemory(t *testing.T) {
	const n, announced = 50, 4 << 20
	for _, transport := range []string{"tcp", "websocket"} {
		t.Run(transport, func(t *testing.T) {
			srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.MaxFrameBytes = announced })
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for i := 0; i < n; i++ {
				device := fmt.Sprintf("big-%s-%d", transport, i)
				if transport == "tcp" {
					c := dial(t, srv.Addrs().TCP)
					c.welcome(device, 0)
					c.sendRaw(append(binary.BigEndian.AppendUint32(nil, announced), protocol.TypePublish, 0, 0, 0, 0, 0, 0, 0, 1, 'x'))
				} else {
					c := rawWSDial(t, srv.Addrs().WS)
					c.welcome(device)
					hdr, _ := protocol.AppendWSHeader(nil, 0x2, announced, true)
					c.write(append(hdr, protocol.TypePublish, 0, 0, 0, 0, 0, 0, 0, 1, 'x'))
				}
			}
			eventually(t, "every read loop to wait for its frame's body", func() bool { return readLoopsInBody(transport != "tcp") >= n })
			runtime.GC()
			runtime.ReadMemStats(&after)
			grew := int64(after.HeapInuse) - int64(before.HeapInuse)
			t.Logf("heap in use grew by %d KiB for %d connections", grew>>10, n)
			if grew > n*announced/8 {
				t.Fatalf("heap in use grew by %d MiB for %d connections that each sent 10 bytes of a %d MiB frame",
					grew>>20, n, announced>>20)
			}
		})
	}
}

// Client frames that break RFC 6455 close the connection with 1002, an
// ERROR bad_frame first at most, and are never processed: each carries a
// PING that would be answered with PONG.
func TestWebSocketProtocolErrors(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	ping := protocol.AppendWSFrame(nil, protocol.TypePing, []byte("p"), true)
	with := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), ping...)) }
	bigPing, start := protocol.AppendWSHeader(nil, 0x9, 126, true)
	bigPing = protocol.MaskFrom(append(bigPing, make([]byte, 126)...), start)
	cases := map[string][]byte{
		"unmasked":          protocol.AppendWSFrame(nil, protocol.TypePing, []byte("p"), false),
		"rsv1":              with(func(b []byte) []byte { b[0] |= 0x40; return b }),
		"rsv2":              with(func(b []byte) []byte { b[0] |= 0x20; return b }),
		"rsv3":              with(func(b []byte) []byte { b[0] |= 0x10; return b }),
		"fragmented ping":   with(func(b []byte) []byte { b[0] = 0x09; return b }),
		"fragmented pong":   with(func(b []byte) []byte { b[0] = 0x0A; return b }),
		"fragmented close":  with(func(b []byte) []byte { b[0] = 0x08; return b }),
		"ping of 126 bytes": bigPing,
	}
	for _, op := range []byte{0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF} {
		cases[fmt.Sprintf("reserved opcode 0x%X", op)] = with(func(b []byte) []byte { b[0] = 0x80 | op; return b })
	}
	for name, frame := range cases {
		t.Run(name, func(t *testing.T) {
			c := rawWSDial(t, srv.Addrs().WS)
			c.send(protocol.TypePing, []byte("ok")) // a valid frame first: the connection works
			if p := c.expect(protocol.TypePong); string(p) != "ok" {
				t.Fatalf("PONG %q", p)
			}
			c.write(frame)
			c.expectClose(protocol.CodeBadFrame, 1002)
		})
	}
	t.Run("unmasked PUBLISH after WELCOME", func(t *testing.T) {
		c := rawWSDial(t, srv.Addrs().WS)
		c.welcome("rfc")
		c.write(protocol.AppendWSFrame(nil, protocol.TypePublish, append(binary.BigEndian.AppendUint64(nil, 1), "up"...), false))
		c.expectClose(protocol.CodeBadFrame, 1002) // and no PUBACK
	})
	t.Run("conforming control frames still work", func(t *testing.T) {
		c := rawWSDial(t, srv.Addrs().WS)
		ping, start := protocol.AppendWSHeader(nil, 0x9, 2, true)
		c.write(protocol.MaskFrom(append(ping, "hi"...), start))
		if op, p, err := c.next(); err != nil || op != 0xA || string(p) != "hi" {
			t.Fatalf("got opcode %d %q %v, want pong hi", op, p, err)
		}
		c.send(protocol.TypePing, []byte("hb"))
		if p := c.expect(protocol.TypePong); string(p) != "hb" {
			t.Fatalf("PONG %q", p)
		}
	})
}

// holdIdle opens n connections that send nothing: handshakes that never
// start. They count against the connection limit.
func holdIdle(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	for i := range conns {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		conns[i] = nc
	}
	return conns
}

// Over --max-connections, a plain WebSocket client gets HTTP 503 with
// Retry-After and no upgrade; a TLS client (TCP or WebSocket) is closed
// before its handshake completes. Connections in a handshake count.
func TestServerFullBeforeHandshake(t *testing.T) {
	t.Run("websocket", func(t *testing.T) {
		srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.MaxConnections = 2 })
		idle := holdIdle(t, srv.Addrs().WS, 2)
		eventually(t, "idle handshakes to be counted", func() bool { return srv.Connections() == 2 })

		_, resp := wsRequest(t, srv.Addrs().WS)
		body, _ := io.ReadAll(resp.Body)
		var e protocol.ErrorBody
		if resp.StatusCode != http.StatusServiceUnavailable || json.Unmarshal(body, &e) != nil || e.Code != protocol.CodeServerFull || e.RetryAfterMs <= 0 {
			t.Fatalf("over the limit: %s %s, want 503 with a server_full body", resp.Status, body)
		}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
			t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
		}
		_, resp, err := websocket.Dial(context.Background(), "ws://"+srv.Addrs().WS+"/ws", &websocket.DialOptions{Subprotocols: []string{protocol.Subprotocol}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("independent client over the limit: %v %v, want HTTP 503", resp, err)
		}

		idle[0].Close()
		eventually(t, "a slot to free up", func() bool { return srv.Connections() < 2 })
		rawWSDial(t, srv.Addrs().WS).welcome("ws-after-full")
	})
	t.Run("tls", func(t *testing.T) {
		cert, pool := testcert.SelfSigned(t)
		srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
			c.MaxConnections = 2
			c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		})
		idle := holdIdle(t, srv.Addrs().TCP, 2)
		eventually(t, "idle handshakes to be counted", func() bool { return srv.Connections() == 2 })
		for name, addr := range map[string]string{"tls": srv.Addrs().TCP, "wss": srv.Addrs().WS} {
			tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{RootCAs: pool})
			if err == nil {
				tc.Close()
				t.Fatalf("%s over the limit: the handshake completed", name)
			}
		}

		idle[0].Close()
		eventually(t, "a slot to free up", func() bool { return srv.Connections() < 2 })
		tc, err := tls.Dial("tcp", srv.Addrs().TCP, &tls.Config{RootCAs: pool})
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		c := &rawConn{t: t, nc: tc, r: protocol.NewReader(tc, 1<<20, 4096)}
		c.welcome("tls-after-full", 0)
	})
}

// At most MaxHandshakes handshakes run at a time; more wait, unaccepted,
// until one ends. A handshake has HandshakeTimeout, not the hello timeout.
func TestHandshakeBounds(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.MaxHandshakes = 2
		c.HelloTimeout = time.Minute
		c.HandshakeTimeout = 30 * time.Second
	})
	idle := holdIdle(t, srv.Addrs().WS, 2)
	eventually(t, "idle handshakes to be counted", func() bool { return srv.Connections() == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if c, _, err := websocket.Dial(ctx, "ws://"+srv.Addrs().WS+"/ws", nil); err == nil {
		c.CloseNow()
		t.Fatal("a third handshake ran while two were in progress")
	}
	idle[0].Close()
	wsDial(t, srv, protocol.Subprotocol)

	fast := startServer(t, store.NewMemory(), "pod-b", func(c *socketserver.Config) {
		c.HelloTimeout = time.Minute
		c.HandshakeTimeout = 100 * time.Millisecond
	})
	nc := holdIdle(t, fast.Addrs().WS, 1)[0]
	_ = nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("an idle handshake after the handshake timeout: %v, want it closed", err)
	}
}

// The accept loops of idle listeners hold no handshake slot: with one slot
// and TLS on every listener, a handshake completes on each in turn.
func TestHandshakeSlotNotHeldByIdleListeners(t *testing.T) {
	cert, pool := testcert.SelfSigned(t)
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
		c.MaxHandshakes = 1
	})
	a := srv.Addrs()
	// Twice round: a loop holding the slot would let only its own listener
	// through (by luck, in the order asked, about once in 4^8 runs).
	addrs := []string{a.TCP, a.WS, a.MQTT, a.GRPC, a.TCP, a.WS, a.MQTT, a.GRPC}
	for i, addr := range addrs {
		name := []string{"tcp", "ws", "mqtt", "grpc"}[i%4]
		d := &tls.Dialer{Config: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"h2", "http/1.1"}}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		nc, err := d.DialContext(ctx, "tcp", addr)
		cancel()
		if err != nil {
			t.Fatalf("TLS handshake on the %s listener with one slot: %v", name, err)
		}
		nc.Close()
	}
}

// With the process at its open-file ceiling, idle handshakes cannot starve
// the admin listener: over the ceiling connections are refused before any
// handshake, and a reserve of descriptors stays free.
func TestAdminAnswersAtTheDescriptorCeiling(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the server binary")
	}
	dir := t.TempDir()
	keyFile, tokenFile := filepath.Join(dir, "key"), filepath.Join(dir, "token")
	_ = os.WriteFile(keyFile, testKey, 0o600)
	_ = os.WriteFile(tokenFile, []byte("admin-token-for-tests"), 0o600)
	const nofile = 300 // a ceiling of 300 − 128 reserved = 172 connections
	cmd := exec.Command("sh", "-c", `ulimit -n `+strconv.Itoa(nofile)+` && exec "$0" "$@"`, serverBinary(t),
		"--tcp-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--pod-name", "fd",
		"--auth-key-file", keyFile, "--api-token-file", tokenFile, "--hello-timeout", "60s", "--handshake-timeout", "60s")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addrs := map[string]string{}
	re := regexp.MustCompile(`listening (tcp|ws|admin)=(\S+?)"?$`)
	sc := bufio.NewScanner(stderr)
	for len(addrs) < 3 && sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			addrs[m[1]] = m[2]
		}
	}
	if len(addrs) < 3 {
		t.Fatalf("server did not start: %v", addrs)
	}
	go func() { _, _ = io.Copy(io.Discard, stderr) }()

	idle := holdIdle(t, addrs["ws"], 2*nofile)
	client := &http.Client{Timeout: 5 * time.Second}
	for i := 0; i < 20; i++ {
		resp, err := client.Get("http://" + addrs["admin"] + "/healthz")
		if err != nil {
			t.Fatalf("/healthz with %d idle handshakes held: %v", len(idle), err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/healthz: %s", resp.Status)
		}
	}
	// The last idle connections were over the ceiling: closed, not held.
	last := idle[len(idle)-1]
	_ = last.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := last.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection over the ceiling: %v, want it closed", err)
	}
	// Plain TCP over the ceiling is answered with server_full (once the
	// refusals under way leave room for an answer).
	eventually(t, "ERROR server_full on plain TCP", func() bool {
		c := dial(t, addrs["tcp"])
		f, err := c.read()
		var e protocol.ErrorBody
		c.nc.Close()
		return err == nil && f.typ == protocol.TypeError && json.Unmarshal(f.body, &e) == nil &&
			e.Code == protocol.CodeServerFull && e.RetryAfterMs > 0
	})
}

// Device tokens must expire unless the server allows otherwise.
func TestTokensWithoutExp(t *testing.T) {
	hello := protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "noexp", Token: token("noexp", 0)})
	c := dial(t, startServer(t, store.NewMemory(), "pod-a", nil).Addrs().TCP)
	c.send(protocol.TypeHello, hello)
	c.expectError(protocol.CodeUnauthorized)

	allowing := startServer(t, store.NewMemory(), "pod-b", func(c *socketserver.Config) { c.AllowTokensWithoutExp = true })
	c = dial(t, allowing.Addrs().TCP)
	c.send(protocol.TypeHello, hello)
	c.expect(protocol.TypeWelcome)
	c = dial(t, allowing.Addrs().TCP)
	c.hello("noexp", 0) // one with exp, still checked
	c.expect(protocol.TypeWelcome)
	c = dial(t, allowing.Addrs().TCP)
	c.send(protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "noexp", Token: token("noexp", -time.Minute)}))
	c.expectError(protocol.CodeUnauthorized)
}

// Device keys shorter than 32 bytes are refused at start, by New and by the
// binary.
func TestShortDeviceKeyRefused(t *testing.T) {
	cfg := func(key []byte) socketserver.Config {
		return socketserver.Config{TCPAddr: "127.0.0.1:0", ServerName: "pod-a", AuthKey: key, InsecureNoAPIAuth: true}
	}
	_, err := socketserver.New(cfg([]byte(strings.Repeat("k", 31))), store.NewMemory(), logr.Discard())
	if err == nil || !strings.Contains(err.Error(), "--auth-key-file") || !strings.Contains(err.Error(), "32-byte") {
		t.Fatalf("31-byte key: %v, want an error naming --auth-key-file and the 32-byte minimum", err)
	}
	if _, err := socketserver.New(cfg([]byte(strings.Repeat("k", 32))), store.NewMemory(), logr.Discard()); err != nil {
		t.Fatalf("32-byte key: %v", err)
	}
	if testing.Short() {
		return
	}
	dir := t.TempDir()
	keyFile, tokenFile := filepath.Join(dir, "key"), filepath.Join(dir, "token")
	_ = os.WriteFile(keyFile, []byte("short-key\n"), 0o600)
	_ = os.WriteFile(tokenFile, []byte("admin-token-for-tests"), 0o600)
	out, err := exec.Command(serverBinary(t), "--tcp-addr", "127.0.0.1:0", "--ws-addr", "", "--admin-addr", "127.0.0.1:0",
		"--auth-key-file", keyFile, "--api-token-file", tokenFile).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 || !strings.Contains(string(out), "--auth-key-file") || !strings.Contains(string(out), "32-byte") {
		t.Fatalf("server with a 9-byte key: %v\n%s", err, out)
	}
}
