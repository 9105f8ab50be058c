// Package redistest runs real redis-server processes for tests: on a free
// loopback port, without persistence, killed when the test ends, and
// restartable on the same port for fault tests.
package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is one redis-server process.
type Server struct {
	t    testing.TB
	Addr string
	port int
	cmd  *exec.Cmd
	dir  string
	// persistent servers fsync every write, so a restart keeps the data.
	persistent bool
	extra      []string
}

// Binary finds redis-server; tests that need it fail with a hint when it is missing.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("REDIS_SERVER"); p != "" {
		return p
	}
	p, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found (apt-get install redis-server, or set REDIS_SERVER): %v", err)
	}
	return p
}

// Start runs a redis-server on a free 127.0.0.1 port until the test ends.
// It keeps nothing across a restart.
func Start(t testing.TB) *Server { t.Helper(); return start(t, false) }

// StartPersistent is Start with an append-only file fsynced on every write:
// killed and restarted, it comes back with every acknowledged write.
func StartPersistent(t testing.TB) *Server { t.Helper(); return start(t, true) }

func start(t testing.TB, persistent bool, extra ...string) *Server {
	t.Helper()
	// Not t.TempDir: a background rewrite forked by the server can still be
	// writing into the directory just after the kill, and t.TempDir fails
	// the test when its RemoveAll meets a file created meanwhile.
	dir, err := os.MkdirTemp("", "redistest")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, dir: dir, persistent: persistent, extra: extra}
	t.Cleanup(func() {
		s.Kill()
		for i := 0; os.RemoveAll(dir) != nil && i < 50; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	})
	// A free port can be taken by another process before redis-server
	// binds it (tests run in parallel): then it is tried on another.
	for attempt := 1; ; attempt++ {
		s.port = freePort(t, slices.Contains(extra, "--cluster-enabled"))
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
		err := s.run()
		if err == nil {
			return s
		}
		if attempt == 5 {
			t.Fatal(err)
		}
	}
}

// freePort is a loopback port free when it returns; with bus, the
// cluster bus port 10000 above it is free too.
func freePort(t testing.TB, bus bool) int {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if !bus {
			l.Close()
			return port
		}
		if port+10000 <= 65535 {
			if lb, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000))); err == nil {
				lb.Close()
				l.Close()
				return port
			}
		}
		l.Close()
	}
}

// Restart starts the process again (after Kill) on the same port.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.run(); err != nil {
		s.t.Fatal(err)
	}
}

// run starts the process and waits until it accepts connections.
func (s *Server) run() error {
	if s.cmd != nil {
		return errors.New("redis-server already running")
	}
	args := []string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--save", "",
		"--dir", s.dir, "--maxclients", "10000", "--appendonly", "no"}
	if s.persistent {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	}
	cmd := exec.Command(Binary(s.t), append(args, s.extra...)...)
	// Its own process group, so that Kill also ends the children it forks
	// for AOF rewrites and snapshots.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	ready, exited := make(chan struct{}), make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		signalled := false
		var last string
		for sc.Scan() {
			last = sc.Text()
			if !signalled && strings.Contains(last, "Ready to accept connections") {
				close(ready)
				signalled = true
			}
		}
		if !signalled {
			exited <- last // it ended before it was ready: a port taken, mostly
		}
	}()
	select {
	case <-ready:
		return nil
	case last := <-exited:
		s.Kill()
		return fmt.Errorf("redis-server on port %d exited: %s", s.port, last)
	case <-time.After(10 * time.Second):
		s.Kill()
		return fmt.Errorf("redis-server on port %d did not become ready", s.port)
	}
}

// Kill stops the process with SIGKILL: data is gone, like a crashed node.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Stop freezes the process with SIGSTOP: it keeps its data and
// connections but answers nothing (commands already sent wait in its
// socket buffers) until Continue, like a node stalled by the host.
func (s *Server) Stop() {
	s.t.Helper()
	if s.cmd == nil {
		s.t.Fatal("redis-server is not running")
	}
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		s.t.Fatal(err)
	}
}

// Continue resumes a process frozen by Stop (SIGCONT); it then runs the
// commands that arrived meanwhile.
func (s *Server) Continue() {
	s.t.Helper()
	if s.cmd == nil {
		s.t.Fatal("redis-server is not running")
	}
	if err := s.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		s.t.Fatal(err)
	}
}

// Client returns a go-redis client for the server, closed when the test ends.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, DialTimeout: time.Second, ReadTimeout: 2 * time.Second,
		WriteTimeout: 2 * time.Second, MaxRetries: 1, ContextTimeoutEnabled: true})
	s.t.Cleanup(func() { c.Close() })
	return c
}

// Ping reports whether the server answers.
func (s *Server) Ping() error {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping %s: %w", s.Addr, err)
	}
	return nil
}
