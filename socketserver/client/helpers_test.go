package client_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/poll"

	"github.com/go-logr/logr"
	"github.com/redis/go-redis/v9"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/client"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// startServer runs an in-process server on loopback ports until the test ends.
func startServer(t testing.TB, name string, st store.Store, mod func(*socketserver.Config)) *socketserver.Server {
	t.Helper()
	cfg := socketserver.Config{TCPAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0",
		AdminAddr: "127.0.0.1:0", ServerName: name, InsecureNoAuth: true, InsecureNoAPIAuth: true}
	if mod != nil {
		mod(&cfg)
	}
	s, err := socketserver.New(cfg, st, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

// redisPair runs two servers on one real Redis, like two pods of a cluster.
func redisPair(t testing.TB, mod func(*socketserver.Config)) (*redistest.Server, *socketserver.Server, *socketserver.Server) {
	t.Helper()
	r := redistest.Start(t)
	a := startServer(t, "server-a", store.NewRedis(r.Client(), "t"), mod)
	b := startServer(t, "server-b", store.NewRedis(r.Client(), "t"), mod)
	return r, a, b
}

// post sends a backend message to device and returns its seq.
func post(t *testing.T, s *socketserver.Server, device, payload string) uint64 {
	t.Helper()
	r, err := (&adminapi.Client{BaseURL: s.Addrs().Admin}).Send(context.Background(), device, []byte(payload), "")
	if err != nil {
		t.Fatalf("POST message: %v", err)
	}
	return r.Seq
}

func getDevice(t *testing.T, s *socketserver.Server, device string) adminapi.DeviceInfo {
	t.Helper()
	info, err := (&adminapi.Client{BaseURL: s.Addrs().Admin}).Device(context.Background(), device)
	if err != nil {
		t.Fatalf("GET device: %v", err)
	}
	return info
}

// publishes reads the server's count of PUBLISH frames with result.
func publishes(t *testing.T, s *socketserver.Server, result string) int {
	t.Helper()
	resp, err := http.Get("http://" + s.Addrs().Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	prefix := `socketserver_publishes_total{result="` + result + `"} `
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// eventually polls cond until it holds, failing the test after 30 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 30*time.Second, what, poll.True(cond))
}

// device is a running client with everything it received and reported.
type device struct {
	*client.Client
	mu     sync.Mutex
	seqs   []uint64
	msgs   []string
	events []client.Event
	runErr chan error
}

// runDevice starts a client (cfg.OnMessage and OnEvent are set here) until the test ends.
func runDevice(t testing.TB, cfg client.Config) *device {
	t.Helper()
	d := &device{runErr: make(chan error, 1)}
	cfg.OnMessage = func(seq uint64, payload []byte) {
		d.mu.Lock()
		d.seqs = append(d.seqs, seq)
		d.msgs = append(d.msgs, string(payload))
		d.mu.Unlock()
	}
	cfg.OnEvent = func(ev client.Event) {
		d.mu.Lock()
		d.events = append(d.events, ev)
		d.mu.Unlock()
	}
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = 200 * time.Millisecond
	}
	d.Client = client.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { d.runErr <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-d.runErr:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
	return d
}

func (d *device) received() ([]uint64, []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]uint64(nil), d.seqs...), append([]string(nil), d.msgs...)
}

func (d *device) eventsOf(typ client.EventType) []client.Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []client.Event
	for _, ev := range d.events {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

// waitConnected waits for the n-th WELCOME and returns it.
func (d *device) waitConnected(t *testing.T, n int) client.Event {
	t.Helper()
	eventually(t, fmt.Sprintf("connect #%d", n), func() bool { return len(d.eventsOf(client.EventConnected)) >= n })
	return d.eventsOf(client.EventConnected)[n-1]
}

// assertInOrder checks that exactly n consecutive seqs arrived, once each,
// in order, with the payloads "m1".."m<n>" (a new outbox starts its seqs
// from the clock, not from 1).
func assertInOrder(t *testing.T, d *device, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d messages", n), func() bool { s, _ := d.received(); return len(s) >= n })
	seqs, msgs := d.received()
	if len(seqs) != n {
		t.Fatalf("got %d messages, want %d: %v", len(seqs), n, seqs)
	}
	base := seqs[0] - 1
	for i, seq := range seqs {
		if seq != base+uint64(i+1) || msgs[i] != fmt.Sprintf("m%d", i+1) {
			t.Fatalf("message %d is seq %d %q, want seq %d %q", i, seq-base, msgs[i], i+1, fmt.Sprintf("m%d", i+1))
		}
	}
}

// proxy forwards TCP connections to a target that can change, and can cut
// them or silently drop what the server sends, to fake network faults.
type proxy struct {
	l      net.Listener
	target atomic.Pointer[string] // nil: refuse connections
	mute   atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l}
	p.setTarget(target)
	go p.serve()
	t.Cleanup(func() { l.Close(); p.cut() })
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) setTarget(addr string) {
	if addr == "" {
		p.target.Store(nil)
		return
	}
	p.target.Store(&addr)
}

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		target := p.target.Load()
		if target == nil {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", *target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(s, c); s.Close() }()
		go func() {
			buf := make([]byte, 4096)
			for {
				n, err := s.Read(buf)
				if n > 0 && !p.mute.Load() {
					_, _ = c.Write(buf[:n])
				}
				if err != nil {
					c.Close()
					return
				}
			}
		}()
	}
}

// cutAndHeal cuts every connection and stops muting before it accepts new
// ones, so that the device's next connection works.
func (p *proxy) cutAndHeal() {
	target := p.target.Swap(nil)
	p.cut()
	p.mute.Store(false)
	p.target.Store(target)
}

// cut closes every connection made so far.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// upstream lists the upstream stream as "[id=payload ...]".
func upstream(t *testing.T, ctx context.Context, rdb *redis.Client) string {
	t.Helper()
	entries, err := rdb.XRange(ctx, "t:upstream", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, fmt.Sprint(e.Values["id"], "=", e.Values["payload"]))
	}
	return fmt.Sprint(got)
}
