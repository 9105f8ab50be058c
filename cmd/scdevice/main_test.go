package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/golang-jwt/jwt/v5"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

const (
	deviceKey = "scdevice-test-device-key-0123456789" // 32 bytes at least
	apiToken  = "scdevice-test-api-token"
	// patience bounds every wait of a test for something that must happen.
	patience = 10 * time.Second
)

// syncBuffer is a bytes.Buffer safe for the CLI's goroutines and the test,
// which can wait for text to appear in it.
type syncBuffer struct {
	mu   sync.Mutex
	b    bytes.Buffer
	grew chan struct{} // closed (and replaced) by every write
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grew != nil {
		close(s.grew)
		s.grew = nil
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor returns once the buffer holds every one of texts, and fails the
// test if that takes longer than patience.
func (s *syncBuffer) waitFor(t *testing.T, name string, texts ...string) {
	t.Helper()
	deadline := time.NewTimer(patience)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		have := s.b.String()
		if s.grew == nil {
			s.grew = make(chan struct{})
		}
		grew := s.grew
		s.mu.Unlock()
		missing := ""
		for _, text := range texts {
			if !strings.Contains(have, text) {
				missing = text
				break
			}
		}
		if missing == "" {
			return
		}
		select {
		case <-grew:
		case <-deadline.C:
			t.Fatalf("%s lacks %q after %s:\n%s", name, missing, patience, have)
		}
	}
}

var errExited = errors.New("scdevice exited")

// cli is scdevice running in-process on real sockets.
type cli struct {
	stdin          *io.PipeWriter
	stdout, stderr *syncBuffer
	code           chan int
}

func startCLI(t *testing.T, args ...string) *cli {
	t.Helper()
	stdinR, stdinW := io.Pipe()
	c := &cli{stdin: stdinW, stdout: &syncBuffer{}, stderr: &syncBuffer{}, code: make(chan int, 1)}
	go func() {
		code := run(context.Background(), args, stdinR, c.stdout, c.stderr)
		stdinR.CloseWithError(errExited) // writes to stdin fail from now on
		c.code <- code
	}()
	t.Cleanup(func() { stdinW.Close() })
	return c
}

func (c *cli) write(t *testing.T, text string) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, text); err != nil {
		t.Fatal(err)
	}
}

// exit ends stdin and returns the exit code.
func (c *cli) exit(t *testing.T) int {
	t.Helper()
	c.stdin.Close()
	select {
	case code := <-c.code:
		return code
	case <-time.After(patience):
		t.Fatalf("scdevice did not exit within %s after stdin ended; stderr:\n%s", patience, c.stderr.String())
		return -1
	}
}

func writeKey(t *testing.T, key string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "device.key")
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startServer runs a socket server with device authentication on loopback
// ports until the test ends.
func startServer(t *testing.T, mod func(*socketserver.Config)) *socketserver.Server {
	t.Helper()
	cfg := socketserver.Config{TCPAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		ServerName: "server-a", AuthKey: []byte(deviceKey), APIToken: apiToken}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := socketserver.New(cfg, store.NewMemory(), logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return srv
}

// admin calls the server's admin API and returns the response body.
func admin(t *testing.T, srv *socketserver.Server, path, body string, want int) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+srv.Addrs().Admin+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("POST %s: %s %s", path, resp.Status, b)
	}
	return b
}

// closedAddr returns a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestDeviceReceivesAndPublishes(t *testing.T) {
	srv := startServer(t, nil)
	keyFile := writeKey(t, deviceKey)
	for _, tc := range []struct{ transport, addr string }{
		{"tcp", srv.Addrs().TCP},
		{"ws", "ws://" + srv.Addrs().WS + "/ws"},
		{"sse", "http://" + srv.Addrs().WS + "/sse"},
		{"grpc", "grpc://" + srv.Addrs().GRPC},
		{"mqtt", "mqtt://" + srv.Addrs().MQTT},
	} {
		t.Run(tc.transport, func(t *testing.T) {
			device := "store-1-" + tc.transport
			var posted struct{ Seq uint64 }
			if err := json.Unmarshal(admin(t, srv, "/v1/devices/"+device+"/messages", "price update", http.StatusAccepted), &posted); err != nil {
				t.Fatal(err)
			}

			c := startCLI(t, "--addr", tc.addr, "--device", device, "--key-file", keyFile, "--wait", "10s")
			c.write(t, "sale 1\nsale 2\n")
			c.stdout.waitFor(t, "stdout", "seq="+strconv.FormatUint(posted.Seq, 10)+" price update\n")
			c.stderr.waitFor(t, "stderr", "connected server=server-a epoch=", "resumed=false", "puback id=1\n", "puback id=2\n")
			if code := c.exit(t); code != 0 {
				t.Fatalf("exit code %d, want 0; stderr:\n%s", code, c.stderr)
			}

			// Nothing to publish: it exits 0 once it has had a session.
			c = startCLI(t, "--addr", tc.addr, "--device", "store-2-"+tc.transport, "--key-file", keyFile)
			if code := c.exit(t); code != 0 || !strings.Contains(c.stderr.String(), "connected server=server-a") {
				t.Fatalf("empty stdin: exit code %d, want 0 after a connected line; stderr:\n%s", code, c.stderr)
			}
		})
	}
}

func TestNothingListening(t *testing.T) {
	addr := closedAddr(t)

	t.Run("lines", func(t *testing.T) {
		c := startCLI(t, "--addr", addr, "--device", "store-1", "--wait", "200ms")
		c.write(t, "sale 1\nsale 2\n")
		c.stderr.waitFor(t, "stderr", "scdevice: connect "+addr+": connection refused; retrying in ")
		if code := c.exit(t); code != 1 {
			t.Fatalf("exit code %d, want 1; stderr:\n%s", code, c.stderr)
		}
		want := "scdevice: gave up: no session with " + addr + " within 200ms; 2 of 2 lines from stdin not acknowledged\n"
		if !strings.Contains(c.stderr.String(), want) {
			t.Fatalf("stderr lacks %q:\n%s", want, c.stderr)
		}
	})

	t.Run("SSE", func(t *testing.T) {
		url := "http://" + addr + "/sse"
		c := startCLI(t, "--addr", url, "--device", "store-1", "--wait", "200ms")
		c.write(t, "sale 1\n")
		c.stderr.waitFor(t, "stderr", "scdevice: connect "+url+": connection refused; retrying in ")
		if code := c.exit(t); code != 1 {
			t.Fatalf("exit code %d, want 1; stderr:\n%s", code, c.stderr)
		}
	})

	t.Run("gRPC", func(t *testing.T) {
		url := "grpc://" + addr
		c := startCLI(t, "--addr", url, "--device", "store-1", "--wait", "200ms")
		c.write(t, "sale 1\n")
		c.stderr.waitFor(t, "stderr", "scdevice: connect "+url+": connection refused; retrying in ")
		if code := c.exit(t); code != 1 {
			t.Fatalf("exit code %d, want 1; stderr:\n%s", code, c.stderr)
		}
	})

	t.Run("empty stdin", func(t *testing.T) {
		c := startCLI(t, "--addr", addr, "--device", "store-1", "--wait", "200ms")
		if code := c.exit(t); code != 1 {
			t.Fatalf("exit code %d, want 1; stderr:\n%s", code, c.stderr)
		}
		want := "scdevice: gave up: no session with " + addr + " within 200ms after stdin ended\n"
		if !strings.Contains(c.stderr.String(), want) {
			t.Fatalf("stderr lacks %q:\n%s", want, c.stderr)
		}
	})
}

func TestPointedAtHTTP(t *testing.T) {
	t.Run("HTTP server", func(t *testing.T) {
		hs := httptest.NewServer(http.NotFoundHandler())
		defer hs.Close()
		addr := hs.Listener.Addr().String()
		c := startCLI(t, "--addr", addr, "--device", "store-1", "--wait", "200ms")
		c.write(t, "sale 1\n")
		c.stderr.waitFor(t, "stderr", `scdevice: the server at `+addr+` answered HTTP ("HTTP/1.1 400 Bad Request"): `+
			`this is not a protocol v1 TCP port; for WebSocket use ws://`+addr+`/ws, for SSE http://`+addr+`/sse; retrying in `)
		if code := c.exit(t); code != 1 {
			t.Fatalf("exit code %d, want 1; stderr:\n%s", code, c.stderr)
		}
	})

	t.Run("WebSocket listener", func(t *testing.T) {
		// The WebSocket listener answers the probe's empty line in HTTP.
		addr := startServer(t, nil).Addrs().WS
		c := startCLI(t, "--addr", addr, "--device", "store-1", "--wait", "200ms")
		c.stderr.waitFor(t, "stderr", `scdevice: the server at `+addr+` answered HTTP ("HTTP/1.1 404 Not Found"): `+
			`this is not a protocol v1 TCP port; for WebSocket use ws://`+addr+`/ws, for SSE http://`+addr+`/sse; retrying in `)
		if code := c.exit(t); code != 1 {
			t.Fatalf("exit code %d, want 1; stderr:\n%s", code, c.stderr)
		}
	})

	t.Run("a server that hangs up", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				nc, err := l.Accept()
				if err != nil {
					return
				}
				_, _ = nc.Read(make([]byte, 512))
				nc.Close()
			}
		}()
		addr := l.Addr().String()
		c := startCLI(t, "--addr", addr, "--device", "store-1", "--wait", "200ms")
		c.stderr.waitFor(t, "stderr", "scdevice: connect "+addr+": the server closed the connection without answering HELLO "+
			"(is it a protocol v1 TCP port? for WebSocket use ws://"+addr+"/ws, for SSE http://"+addr+"/sse); retrying in ")
		if code := c.exit(t); code != 1 {
			t.Fatalf("exit code %d, want 1; stderr:\n%s", code, c.stderr)
		}
	})

	t.Run("SSE address of the admin listener", func(t *testing.T) {
		srv := startServer(t, nil)
		addr := "http://" + srv.Addrs().Admin + "/sse"
		c := startCLI(t, "--addr", addr, "--device", "store-1", "--wait", "200ms")
		c.stderr.waitFor(t, "stderr", "scdevice: GET "+addr+" answered 404 Not Found without a protocol ERROR: "+
			"is it the socket server's /sse?; retrying in ")
		if code := c.exit(t); code != 1 {
			t.Fatalf("exit code %d, want 1; stderr:\n%s", code, c.stderr)
		}
	})
}

func TestRefusals(t *testing.T) {
	t.Run("unauthorized", func(t *testing.T) {
		srv := startServer(t, nil)
		addr := srv.Addrs().TCP
		c := startCLI(t, "--addr", addr, "--device", "store-1", "--key-file", writeKey(t, "not-the-device-key-0123456789abcdef"), "--wait", "200ms")
		c.write(t, "sale 1\n")
		c.stderr.waitFor(t, "stderr", "scdevice: connect "+addr+": HELLO refused: unauthorized: ", "; retrying in ")
		if code := c.exit(t); code != 1 {
			t.Fatalf("exit code %d, want 1; stderr:\n%s", code, c.stderr)
		}
		if !strings.Contains(c.stderr.String(), "1 of 1 lines from stdin not acknowledged") {
			t.Fatalf("stderr:\n%s", c.stderr)
		}
	})

	t.Run("server full", func(t *testing.T) {
		srv := startServer(t, func(c *socketserver.Config) { c.MaxConnections = 1 })
		addr := srv.Addrs().TCP
		keyFile := writeKey(t, deviceKey)
		holder := startCLI(t, "--addr", addr, "--device", "store-0", "--key-file", keyFile) // the only connection allowed
		holder.stderr.waitFor(t, "the first device's stderr", "connected server=server-a")
		c := startCLI(t, "--addr", addr, "--device", "store-1", "--key-file", keyFile, "--wait", "200ms")
		c.stderr.waitFor(t, "stderr", "scdevice: connect "+addr+": HELLO refused: server_full: ", "(retry_after_ms=")
		if code := c.exit(t); code != 1 {
			t.Fatalf("exit code %d, want 1; stderr:\n%s", code, c.stderr)
		}
		if code := holder.exit(t); code != 0 {
			t.Fatalf("the first device: exit code %d, want 0; stderr:\n%s", code, holder.stderr)
		}
	})

	t.Run("GOAWAY", func(t *testing.T) {
		srv := startServer(t, nil)
		addr := srv.Addrs().TCP
		c := startCLI(t, "--addr", addr, "--device", "store-1", "--key-file", writeKey(t, deviceKey))
		c.stderr.waitFor(t, "stderr", "connected server=server-a")
		admin(t, srv, "/drain", "", http.StatusAccepted)
		c.stderr.waitFor(t, "stderr", "scdevice: the server at "+addr+" sent GOAWAY (draining); reconnecting in ")
		if code := c.exit(t); code != 0 { // it had a session and nothing to publish
			t.Fatalf("exit code %d, want 0; stderr:\n%s", code, c.stderr)
		}
	})
}

// Over SSE the refusals of the stream request read as HELLO refusals, and
// a takeover ends scdevice with exit code 3.
func TestSSERefusals(t *testing.T) {
	sseAddr := func(srv *socketserver.Server) string { return "http://" + srv.Addrs().WS + "/sse" }

	t.Run("unauthorized", func(t *testing.T) {
		addr := sseAddr(startServer(t, nil))
		c := startCLI(t, "--addr", addr, "--device", "store-1", "--key-file", writeKey(t, "not-the-device-key-0123456789abcdef"), "--wait", "200ms")
		c.write(t, "sale 1\n")
		c.stderr.waitFor(t, "stderr", "scdevice: connect "+addr+": HELLO refused: unauthorized: ", "; retrying in ")
		if code := c.exit(t); code != 1 {
			t.Fatalf("exit code %d, want 1; stderr:\n%s", code, c.stderr)
		}
	})

	t.Run("server full", func(t *testing.T) {
		srv := startServer(t, func(c *socketserver.Config) { c.MaxConnections = 1 })
		keyFile := writeKey(t, deviceKey)
		holder := startCLI(t, "--addr", srv.Addrs().TCP, "--device", "store-0", "--key-file", keyFile) // the only connection allowed
		holder.stderr.waitFor(t, "the first device's stderr", "connected server=server-a")
		addr := sseAddr(srv)
		c := startCLI(t, "--addr", addr, "--device", "store-1", "--key-file", keyFile, "--wait", "200ms")
		c.stderr.waitFor(t, "stderr", "scdevice: connect "+addr+": HELLO refused: server_full: ", "(retry_after_ms=")
		if code := c.exit(t); code != 1 {
			t.Fatalf("exit code %d, want 1; stderr:\n%s", code, c.stderr)
		}
		if code := holder.exit(t); code != 0 {
			t.Fatalf("the first device: exit code %d, want 0; stderr:\n%s", code, holder.stderr)
		}
	})

	t.Run("GOAWAY", func(t *testing.T) {
		srv := startServer(t, nil)
		addr := sseAddr(srv)
		c := startCLI(t, "--addr", addr, "--device", "store-1", "--key-file", writeKey(t, deviceKey))
		c.stderr.waitFor(t, "stderr", "connected server=server-a")
		admin(t, srv, "/drain", "", http.StatusAccepted)
		c.stderr.waitFor(t, "stderr", "scdevice: the server at "+addr+" sent GOAWAY (draining); reconnecting in ")
		if code := c.exit(t); code != 0 {
			t.Fatalf("exit code %d, want 0; stderr:\n%s", code, c.stderr)
		}
	})

	t.Run("taken over", func(t *testing.T) {
		srv := startServer(t, nil)
		keyFile := writeKey(t, deviceKey)
		c := startCLI(t, "--addr", sseAddr(srv), "--device", "store-1", "--key-file", keyFile, "--stay")
		c.stderr.waitFor(t, "stderr", "connected server=server-a")
		winner := startCLI(t, "--addr", srv.Addrs().TCP, "--device", "store-1", "--key-file", keyFile, "--stay")
		winner.stderr.waitFor(t, "the winner's stderr", "connected server=server-a")
		select {
		case code := <-c.code:
			if code != 3 || !strings.Contains(c.stderr.String(), "session taken over") {
				t.Fatalf("exit code %d, want 3; stderr:\n%s", code, c.stderr)
			}
		case <-time.After(patience):
			t.Fatalf("scdevice kept running after the takeover; stderr:\n%s", c.stderr)
		}
	})
}

func TestTokenFor(t *testing.T) {
	keyFile := writeKey(t, deviceKey+"  ")
	var stdout, stderr syncBuffer
	if c := run(context.Background(), []string{"--token-for", "kiosk-9", "--key-file", keyFile}, nil, &stdout, &stderr); c != 0 {
		t.Fatalf("exit code %d: %s", c, stderr.String())
	}
	tok, err := jwt.NewParser(jwt.WithSubject("kiosk-9"), jwt.WithExpirationRequired()).
		Parse(strings.TrimSpace(stdout.String()), func(*jwt.Token) (any, error) { return []byte(deviceKey), nil })
	if err != nil || !tok.Valid {
		t.Fatalf("printed token does not verify with the trimmed key: %v", err)
	}
	if c := run(context.Background(), []string{"--token-for", "kiosk-9"}, nil, &stdout, &stderr); c != 2 {
		t.Fatalf("--token-for without a key: exit code %d, want 2", c)
	}
}
