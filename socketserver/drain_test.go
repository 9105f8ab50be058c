package socketserver_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/poll"
	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// fleet is a set of simulated devices and a backend sending to them.
type fleet struct {
	devices []*simDevice
	maxSeq  []atomic.Uint64
	sent    atomic.Int64
}

func newFleet(n int, transport string, addrs func() []string) *fleet {
	f := &fleet{devices: make([]*simDevice, n), maxSeq: make([]atomic.Uint64, n)}
	for i := range f.devices {
		f.devices[i] = &simDevice{name: fmt.Sprintf("dev-%04d", i), transport: transport, addrs: addrs}
	}
	return f
}

func (f *fleet) run(ctx context.Context, wg *sync.WaitGroup) {
	for _, d := range f.devices {
		wg.Add(1)
		go func() { defer wg.Done(); d.run(ctx) }()
	}
}

// backend posts messages to random devices through random servers until ctx ends.
func (f *fleet) backend(ctx context.Context, t *testing.T, wg *sync.WaitGroup, servers func() []target, workers int) {
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := rand.IntN(len(f.devices))
				srvs := servers()
				srv := srvs[rand.IntN(len(srvs))]
				r, err := adminClient(srv, "").Send(context.WithoutCancel(ctx), f.devices[i].name, []byte("payload"), "")
				if err != nil {
					continue // 503 while a store is down: the backend retries later
				}
				seq := r.Seq
				for {
					cur := f.maxSeq[i].Load()
					if seq <= cur || f.maxSeq[i].CompareAndSwap(cur, seq) {
						break
					}
				}
				f.sent.Add(1)
				time.Sleep(time.Millisecond)
			}
		}()
	}
}

func (f *fleet) waitConnected(t *testing.T) {
	t.Helper()
	eventually(t, "all devices connected", func() bool {
		for _, d := range f.devices {
			if _, ok := d.state(); !ok {
				return false
			}
		}
		return true
	})
}

// verify waits until every device processed every message, in order, and
// reports any contract violation.
func (f *fleet) verify(t *testing.T) {
	t.Helper()
	poll.Until(t, 30*time.Second, "every message delivered", func() error {
		var stuck []string
		for i, d := range f.devices {
			if last, connected := d.state(); !connected || last != f.maxSeq[i].Load() {
				stuck = append(stuck, fmt.Sprintf("%s (connected %v, seq %d of %d)", d.name, connected, last, f.maxSeq[i].Load()))
			}
		}
		if len(stuck) > 0 {
			return fmt.Errorf("%d devices behind: %s", len(stuck), strings.Join(stuck[:min(len(stuck), 5)], ", "))
		}
		return nil
	})
	var dups, goaways, taken int
	var reconnects []time.Duration
	for _, d := range f.devices {
		d.mu.Lock()
		for _, v := range d.violations {
			t.Error(v)
		}
		dups += d.dups
		goaways += d.goaways
		taken += d.takenOver
		reconnects = append(reconnects, d.reconnects...)
		d.mu.Unlock()
	}
	slices.Sort(reconnects)
	var worst time.Duration
	if len(reconnects) > 0 {
		worst = reconnects[len(reconnects)-1]
	}
	t.Logf("devices=%d messages=%d goaways=%d reconnects=%d max_reconnect=%v duplicates_of_unacked=%d late_takeovers=%d",
		len(f.devices), f.sent.Load(), goaways, len(reconnects), worst, dups, taken)
}

// Draining one of three servers while 1,000 devices are connected over TCP
// (300 over gRPC, whose clients are slow to start under the race
// detector): all move to the others, and every message sent during the
// drain arrives in order.
func TestDrainMovesDevicesWithoutLoss(t *testing.T) {
	for transport, n := range map[string]int{"tcp": 1000, "grpc": 300} {
		t.Run(transport, func(t *testing.T) { testDrainMovesDevices(t, transport, n) })
	}
}

func testDrainMovesDevices(t *testing.T, transport string, n int) {
	r := redistest.Start(t)
	var servers []*socketserver.Server
	for i := 0; i < 3; i++ {
		servers = append(servers, startServer(t, redisStore(t, r), fmt.Sprintf("pod-%d", i), func(c *socketserver.Config) {
			// Long enough that devices leave by themselves even on a
			// loaded CI machine; GOAWAYs are spread over 80% of it.
			c.DrainTimeout = 8 * time.Second
			c.DrainJitter = 300 * time.Millisecond
		}))
	}
	live := func() []target {
		var out []target
		for _, s := range servers {
			if !s.Draining() {
				out = append(out, s)
			}
		}
		return out
	}
	addrs := func() []string {
		var out []string
		for _, s := range live() {
			out = append(out, deviceAddr(s.Addrs(), transport))
		}
		return out
	}
	f := newFleet(n, transport, addrs)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	f.run(ctx, &wg)
	f.waitConnected(t)
	bctx, stopBackend := context.WithCancel(ctx)
	var bwg sync.WaitGroup
	f.backend(bctx, t, &bwg, live, 8)
	time.Sleep(300 * time.Millisecond)
	held := servers[0].Connections()
	code, _ := api(t, servers[0], "POST", "/drain", "")
	if code != 202 {
		t.Fatalf("POST /drain: %d", code)
	}
	if code, _ := api(t, servers[0], "GET", "/readyz", ""); code != 503 {
		t.Fatalf("readyz while draining: %d", code)
	}
	code, body := api(t, servers[0], "POST", "/drain?wait=1", "")
	if code != 200 || body != "{\"remaining\":0}\n" {
		t.Fatalf("drain wait: %d %s", code, body)
	}
	if transport == "tcp" {
		// A HELLO to the drained server is answered with GOAWAY (over
		// gRPC too: TestGRPCDrain).
		c := dial(t, servers[0].Addrs().TCP)
		c.hello("late", 0)
		c.expect(protocol.TypeGoAway)
	}
	time.Sleep(300 * time.Millisecond)
	stopBackend()
	bwg.Wait()
	f.verify(t)
	if held == 0 || servers[1].Connections()+servers[2].Connections() != n {
		t.Fatalf("drained server held %d; others hold %d", held, servers[1].Connections()+servers[2].Connections())
	}
}

// Pacing: with --drain-rate the GOAWAYs are spread, not sent at once.
func TestDrainPacing(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.DrainRate = 10 // one every 100 ms
		c.DrainJitter = 2 * time.Second
	})
	const n = 5
	conns := make([]*rawConn, n)
	for i := range conns {
		conns[i] = dial(t, srv.Addrs().TCP)
		conns[i].welcome(fmt.Sprintf("d%d", i), 0)
	}
	start := time.Now()
	srv.Drain()
	arrivals := make([]time.Duration, n)
	hints := make([]int64, n)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := c.read()
			arrivals[i] = time.Since(start)
			var g protocol.GoAway
			if err != nil || f.typ != protocol.TypeGoAway || protocol.ParseJSON(f.body, &g) != nil || g.Reason != "draining" {
				t.Errorf("want GOAWAY, got %v %v", f, err)
			}
			hints[i] = g.ReconnectAfterMs
			c.nc.Close()
		}()
	}
	wg.Wait()
	slices.Sort(arrivals)
	// 5 GOAWAYs at 10/s: the last leaves 4 intervals after the drain
	// started. A late reader only delays an arrival, so the bound holds
	// on a loaded machine; a span between arrivals would not.
	if last := arrivals[n-1]; last < 390*time.Millisecond {
		t.Fatalf("GOAWAYs not paced: all within %v of the drain", last)
	}
	for _, h := range hints {
		if h < 0 || h > 2000 {
			t.Fatalf("reconnect_after_ms %d outside [0, 2000]", h)
		}
	}
	if slices.Min(hints) == slices.Max(hints) {
		t.Fatalf("reconnect hints not jittered: %v", hints)
	}
	select {
	case <-srv.Drain():
	case <-time.After(5 * time.Second):
		t.Fatal("drain did not finish after every device left")
	}
}

// POST /drain?rate= paces this drain instead of --drain-rate: the operator
// shares a cluster-wide rate among the pods it drains this way.
func TestDrainRateOfTheRequest(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.DrainRate = 1000 })
	for _, bad := range []string{"0", "-1", "x", "+Inf"} {
		if code, body := api(t, srv, "POST", "/drain?rate="+bad, ""); code != 400 || !strings.Contains(body, adminapi.CodeBadQuery) {
			t.Fatalf("rate=%s: %d %s, want 400 %s", bad, code, body, adminapi.CodeBadQuery)
		}
	}
	if srv.Draining() {
		t.Fatal("a refused drain request started a drain")
	}
	const n = 5
	conns := make([]*rawConn, n)
	for i := range conns {
		conns[i] = dial(t, srv.Addrs().TCP)
		conns[i].welcome(fmt.Sprintf("d%d", i), 0)
	}
	start := time.Now()
	if err := adminClient(srv, "").DrainAtRate(context.Background(), 10); err != nil {
		t.Fatal(err)
	}
	var last time.Duration
	for _, c := range conns {
		if f, err := c.read(); err != nil || f.typ != protocol.TypeGoAway {
			t.Fatalf("want GOAWAY, got %v %v", f, err)
		}
		last = time.Since(start)
		c.nc.Close()
	}
	// At 10/s the fifth GOAWAY leaves 4 intervals after the first; at the
	// server's own 1000/s it would leave within a few milliseconds.
	if last < 390*time.Millisecond {
		t.Fatalf("the drain ignored rate=10: every GOAWAY within %v", last)
	}
}

// POST /drain?delay=&rate= turns the server unready at once and holds the
// GOAWAYs for the delay (the load balancer's deregistration); a drain
// asked for meanwhile ends the delay. The operator drains the pods of a
// scale-down this way.
func TestDrainAfterAtRate(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	c := dial(t, srv.Addrs().TCP)
	c.welcome("d1", 0)
	if err := adminClient(srv, "").DrainAfterAtRate(context.Background(), time.Hour, 10); err != nil {
		t.Fatal(err)
	}
	if !srv.Draining() || srv.Connections() != 1 {
		t.Fatalf("draining %v with %d connections, want unready with the device still on", srv.Draining(), srv.Connections())
	}
	srv.Drain()
	if f, err := c.read(); err != nil || f.typ != protocol.TypeGoAway {
		t.Fatalf("want GOAWAY once the delay ended, got %v %v", f, err)
	}
}
