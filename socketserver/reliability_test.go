package socketserver_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// Redis restarts empty under a connected device that had processed and
// acknowledged messages: what the backend sends afterwards gets seqs above
// the device's, reaches the same connection without a reconnect, and a
// later resume with the old last_seq deletes nothing.
func TestStoreLosesDataUnderConnectedDevice(t *testing.T) {
	r := redistest.Start(t) // no persistence
	srv := startServer(t, redisStore(t, r), "pod-a", func(c *socketserver.Config) { c.StoreTimeout = 500 * time.Millisecond })
	c := dial(t, srv.Addrs().TCP)
	c.welcome("d", 0)
	var last uint64
	for i := 0; i < 5; i++ {
		send(t, srv, "d", fmt.Sprint("old", i))
		last, _ = c.deliver()
	}
	c.ackStored(srv, "d", last)

	r.Kill()
	r.Restart()
	var seqs []uint64
	eventually(t, "sends accepted after the restart", func() bool {
		code, _ := api(t, srv, "GET", "/readyz", "")
		return code == 200 && r.Ping() == nil
	})
	for i := 0; i < 3; i++ {
		seqs = append(seqs, send(t, srv, "d", fmt.Sprint("new", i)))
	}
	if seqs[0] <= last {
		t.Fatalf("seq %d after the loss is not above the device's %d", seqs[0], last)
	}
	for i, want := range seqs {
		seq, p := c.deliver()
		if seq != want || p != fmt.Sprint("new", i) {
			t.Fatalf("DELIVER %d %q on the same connection, want %d %q", seq, p, want, fmt.Sprint("new", i))
		}
	}
	// The restored session takes this connection's ACK ...
	c.ack(seqs[1])
	eventually(t, "ack after the loss stored", func() bool {
		d := deviceInfo(t, srv, "d")
		return d.AckedSeq == seqs[1] && d.Connected && d.Server == "pod-a"
	})
	// ... and a resume with a last_seq from before the loss deletes nothing.
	c.nc.Close()
	c2 := dial(t, srv.Addrs().TCP)
	c2.welcome("d", last)
	if seq, _ := c2.deliver(); seq != seqs[2] {
		t.Fatalf("after resume: DELIVER %d, want %d", seq, seqs[2])
	}
}

// A session evicted from Redis (no restart, so no resubscription) is found
// by the audit: a message sent after the eviction reaches the connected
// device without a reconnect.
func TestEvictedSessionIsRestored(t *testing.T) {
	r := redistest.Start(t)
	srv := startServer(t, redisStore(t, r), "pod-a", func(c *socketserver.Config) { c.AuditInterval = 100 * time.Millisecond })
	c := dial(t, srv.Addrs().TCP)
	c.welcome("d", 0)
	first := send(t, srv, "d", "before")
	c.deliver()
	c.ackStored(srv, "d", first)
	rdb := r.Client()
	if err := rdb.Del(context.Background(), "t:{d}:s", "t:{d}:q").Err(); err != nil {
		t.Fatal(err)
	}
	seq := send(t, srv, "d", "after")
	if got, p := c.deliver(); got != seq || got <= first || p != "after" {
		t.Fatalf("DELIVER %d %q, want %d above %d", got, p, seq, first)
	}
	eventually(t, "session restored", func() bool { d := deviceInfo(t, srv, "d"); return d.Connected && d.Server == "pod-a" })
}

// slowHello delays the answer of a HELLO that the store already applied,
// so that a second server's HELLO and its takeover notice land in between.
type slowHello struct {
	store.Store
	applied chan struct{}
	release chan struct{}
}

func (s *slowHello) Hello(ctx context.Context, device string, h store.Holder, lastSeq uint64) (store.Session, error) {
	sess, err := s.Store.Hello(ctx, device, h, lastSeq)
	close(s.applied)
	<-s.release
	return sess, err
}

// A takeover notice that reaches a server before the losing connection
// registered is kept: the loser still gets session_taken_over, and the
// next message goes to the winner.
func TestTakeoverNoticeBeforeRegister(t *testing.T) {
	r := redistest.Start(t)
	slow := &slowHello{Store: redisStore(t, r), applied: make(chan struct{}), release: make(chan struct{})}
	a := startServer(t, slow, "pod-a", nil)
	b := startServer(t, redisStore(t, r), "pod-b", nil)
	loser := dial(t, a.Addrs().TCP)
	loser.hello("d", 0)
	<-slow.applied
	winner := dial(t, b.Addrs().TCP)
	winner.welcome("d", 0)
	// Let pod-a's HELLO finish once the notice reached it.
	eventually(t, "notice kept", func() bool { return metric(t, a, "socketserver_takeover_notices_kept_total") == 1 })
	close(slow.release)
	loser.expect(protocol.TypeWelcome)
	loser.expectError(protocol.CodeSessionTakenOver)
	send(t, b, "d", "x")
	if _, p := winner.deliver(); p != "x" {
		t.Fatalf("winner got %q", p)
	}
}

// Two HELLOs of one device racing on two servers: whatever the timing,
// one connection stays open (the newer HELLO's), and a message reaches it.
func TestRacingHellos(t *testing.T) {
	r := redistest.Start(t)
	a := startServer(t, redisStore(t, r), "pod-a", nil)
	b := startServer(t, redisStore(t, r), "pod-b", nil)
	for trial := 0; trial < 20; trial++ {
		dev := fmt.Sprint("race-", trial)
		t.Run(dev, func(t *testing.T) {
			t.Parallel()
			conns := []*rawConn{dial(t, a.Addrs().TCP), dial(t, b.Addrs().TCP)}
			hello := protocol.AppendFrame(nil, protocol.TypeHello,
				protocol.MustJSON(protocol.Hello{Protocol: 1, Device: dev, Token: token(dev, time.Hour)}))
			var wg sync.WaitGroup
			for _, c := range conns {
				wg.Add(1)
				go func() { defer wg.Done(); _, _ = c.nc.Write(hello) }()
			}
			wg.Wait()
			// Read each connection until it is closed or 3 s pass.
			open := make([]bool, 2)
			for i, c := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_ = c.nc.SetReadDeadline(time.Now().Add(3 * time.Second))
					for {
						if _, _, err := c.r.ReadFrame(); err != nil {
							var ne interface{ Timeout() bool }
							open[i] = errors.As(err, &ne) && ne.Timeout()
							return
						}
					}
				}()
			}
			wg.Wait()
			if open[0] == open[1] {
				t.Fatalf("open after 3 s: %v; want exactly one of the two connections", open)
			}
			for i, c := range conns {
				if open[i] {
					send(t, a, dev, "after")
					if _, p := c.deliver(); p != "after" {
						t.Fatalf("survivor got %q", p)
					}
				}
			}
		})
	}
}

// A HELLO that timed out in a stalled store may still be applied by it:
// the server releases it, so the device does not look connected for good.
func TestFailedHelloIsReleased(t *testing.T) {
	r := redistest.Start(t)
	srv := startServer(t, redisStore(t, r), "pod-a", func(c *socketserver.Config) { c.StoreTimeout = 300 * time.Millisecond })
	r.Stop()
	c := dial(t, srv.Addrs().TCP)
	c.hello("d", 0)
	c.expectError(protocol.CodeUnavailable) // the HELLO's store call timed out
	r.Continue()
	eventually(t, "HELLO applied by the store", func() bool {
		_, err := r.Client().HGet(context.Background(), "t:{d}:s", "epoch").Result()
		return err == nil
	})
	eventually(t, "failed HELLO released", func() bool {
		d := deviceInfo(t, srv, "d")
		return !d.Connected && d.Server == ""
	})
}

// metric reads one unlabelled sample from srv's /metrics.
func metric(t *testing.T, srv target, name string) float64 {
	t.Helper()
	_, body := api(t, srv, "GET", "/metrics", "")
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}
