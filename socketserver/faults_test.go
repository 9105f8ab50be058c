package socketserver_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// Redis going away: sessions stay up and heartbeats work, new HELLOs get
// unavailable with a retry hint, nothing is acknowledged that was not
// stored, and service comes back by itself.
func TestRedisDownAndBack(t *testing.T) {
	r := redistest.StartPersistent(t)
	srv := startServer(t, redisStore(t, r), "pod-a", func(c *socketserver.Config) { c.StoreTimeout = 500 * time.Millisecond })
	c := dial(t, srv.Addrs().TCP)
	c.welcome("d", 0)
	first := send(t, srv, "d", "before")
	c.deliver()
	c.ackStored(srv, "d", first)

	r.Kill()
	c.send(protocol.TypePing, []byte("alive"))
	c.expect(protocol.TypePong)
	c.publish(1, "while-down") // cannot be stored: no PUBACK
	c.send(protocol.TypePing, []byte("after-publish"))
	if f := c.expect(protocol.TypePong); string(f.body) != "after-publish" {
		t.Fatalf("got %v", f)
	}
	if code, _ := api(t, srv, "POST", "/v1/devices/d/messages", "lost?"); code != 503 {
		t.Fatalf("POST with Redis down: %d, want 503", code)
	}
	n := dial(t, srv.Addrs().TCP)
	n.hello("newcomer", 0)
	if e := n.expectError(protocol.CodeUnavailable); e.RetryAfterMs <= 0 {
		t.Fatalf("unavailable without retry_after_ms: %+v", e)
	}

	r.Restart()
	// The device retransmits its PUBLISH; now it is stored and acknowledged.
	eventually(t, "publish stored after Redis returned", func() bool {
		c.publish(1, "while-down")
		f, err := c.read()
		return err == nil && f.typ == protocol.TypePubAck
	})
	send(t, srv, "d", "after")
	if seq, p := c.deliver(); seq != first+1 || p != "after" {
		t.Fatalf("after restart: %d %q, want %d", seq, p, first+1)
	}
	dial(t, srv.Addrs().TCP).welcome("newcomer", 0)
	if got := r.Client().XLen(context.Background(), "t:upstream").Val(); got != 1 {
		t.Fatalf("upstream holds %d entries, want 1", got)
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// serverBinary builds cmd/socketserver once, for tests that need a real
// process to kill or signal.
func serverBinary(t *testing.T) string {
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "socketserver-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "socketserver")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/socketserver").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

type proc struct {
	cmd                    *exec.Cmd
	tcp, grpc, admin, name string
	exited                 chan error
}

func (p *proc) Addrs() socketserver.Addrs {
	return socketserver.Addrs{TCP: p.tcp, GRPC: p.grpc, Admin: p.admin}
}

func startProc(t *testing.T, redisAddr, name string, extra ...string) *proc {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "key")
	_ = os.WriteFile(keyFile, append(testKey, '\n'), 0o600)
	args := []string{"--tcp-addr", "127.0.0.1:0", "--ws-addr", "", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--redis-addr", redisAddr, "--redis-prefix", "t", "--pod-name", name, "--auth-key-file", keyFile}
	if !slices.ContainsFunc(extra, func(a string) bool { return strings.HasPrefix(a, "--api-token-file") }) {
		args = append(args, "--insecure-no-api-auth") // the API is open unless the test gives a token
	}
	args = append(args, extra...)
	cmd := exec.Command(serverBinary(t), args...)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, name: name, exited: make(chan error, 1)}
	addrs := make(chan map[string]string, 1)
	go func() {
		// The admin listener is logged last.
		re := regexp.MustCompile(`listening (tcp|grpc|admin)=(\S+?)"?$`)
		bound := map[string]string{}
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				bound[m[1]] = m[2]
				if m[1] == "admin" {
					addrs <- bound
				}
			}
		}
		p.exited <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	select {
	case a := <-addrs:
		p.tcp, p.grpc, p.admin = a["tcp"], a["grpc"], a["admin"]
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not start", name)
	}
	return p
}

// A server killed with SIGKILL: its devices, on TCP or gRPC, resume on the
// other one and nothing acknowledged is lost.
func TestKillNineResumesElsewhere(t *testing.T) {
	for _, transport := range []string{"tcp", "grpc"} {
		t.Run(transport, func(t *testing.T) { testKillNine(t, transport) })
	}
}

func testKillNine(t *testing.T, transport string) {
	r := redistest.Start(t)
	a := startProc(t, r.Addr, "pod-a")
	b := startProc(t, r.Addr, "pod-b")
	var mu sync.Mutex
	targets := []string{deviceAddr(a.Addrs(), transport)}
	addrs := func() []string { mu.Lock(); defer mu.Unlock(); return targets }
	f := newFleet(200, transport, addrs)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	f.run(ctx, &wg)
	f.waitConnected(t)
	backend := func() []target { return []target{b} }
	bctx, stop := context.WithCancel(ctx)
	var bwg sync.WaitGroup
	f.backend(bctx, t, &bwg, backend, 4)
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	targets = []string{deviceAddr(b.Addrs(), transport)}
	mu.Unlock()
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.exited
	time.Sleep(500 * time.Millisecond)
	stop()
	bwg.Wait()
	f.verify(t)
}

// SIGTERM: readiness goes 503 at once, devices get GOAWAY, the process
// exits 0 when they are gone.
func TestSigtermDrainsAndExits(t *testing.T) {
	r := redistest.Start(t)
	p := startProc(t, r.Addr, "pod-a", "--drain-timeout", "3s", "--drain-jitter", "100ms")
	c := dial(t, p.tcp)
	c.welcome("d", 0)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	c.expect(protocol.TypeGoAway)
	if code, _ := api(t, p, "GET", "/readyz", ""); code != 503 {
		t.Fatalf("readyz after SIGTERM: %d", code)
	}
	c.nc.Close()
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("process did not exit after draining")
	}
}
