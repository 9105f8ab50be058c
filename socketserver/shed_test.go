package socketserver_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// A drain with a delay (the pod's preStop wait) turns the server unready
// at once but keeps serving: connected devices get their messages, new
// devices are welcomed, and no GOAWAY goes out until the delay ends
// (here: cut short by a drain without delay, so the test waits on no clock).
func TestDrainDelayServesUnreadyUntilGoAways(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.DrainRate = 1000 })
	early := dial(t, srv.Addrs().TCP)
	early.welcome("early", 0)

	if code, body := api(t, srv, "POST", "/drain?delay=1h", ""); code != 202 {
		t.Fatalf("POST /drain?delay=1h: %d %s", code, body)
	}
	if code, _ := api(t, srv, "GET", "/readyz", ""); code != 503 {
		t.Fatalf("readyz during the delay: %d, want 503 at once", code)
	}
	if !srv.Draining() {
		t.Fatal("Draining() false during the delay")
	}
	// Still serving: a new device is welcomed, not sent away, and a
	// message reaches a connected one.
	late := dial(t, srv.Addrs().TCP)
	late.welcome("late", 0)
	seq := send(t, srv, "early", "still here")
	if got, payload := early.deliver(); got != seq || payload != "still here" {
		t.Fatalf("deliver during the delay: %d %q", got, payload)
	}
	early.ack(seq)

	// A drain without delay ends the wait; both devices get GOAWAY.
	if code, _ := api(t, srv, "POST", "/drain", ""); code != 202 {
		t.Fatalf("POST /drain: %d", code)
	}
	for _, c := range []*rawConn{early, late} {
		var g protocol.GoAway
		if err := protocol.ParseJSON(c.expect(protocol.TypeGoAway).body, &g); err != nil || g.Reason != "draining" {
			t.Fatalf("GOAWAY %+v %v", g, err)
		}
		c.nc.Close()
	}
	select {
	case <-srv.Drain():
	case <-time.After(30 * time.Second):
		t.Fatal("drain did not end after every device left")
	}
}

// The delay ends by itself, and the HTTP drain with wait answers after it.
func TestDrainDelayElapses(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	c := dial(t, srv.Addrs().TCP)
	c.welcome("d", 0)
	done := make(chan error, 1)
	go func() {
		n, err := adminClient(srv, "").DrainAfter(context.Background(), 200*time.Millisecond, true)
		if err == nil && n != 0 {
			err = fmt.Errorf("%d connections remaining", n)
		}
		done <- err
	}()
	c.expect(protocol.TypeGoAway)
	c.nc.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if code, body := api(t, srv, "POST", "/drain?delay=soon", ""); code != 400 {
		t.Fatalf("bad delay: %d %s", code, body)
	}
}

// POST /shed sends GOAWAY to the number of devices asked, each once, with
// jittered hints, while the server stays ready; it needs the API token.
func TestShed(t *testing.T) {
	const tok = "shed-token"
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.APIToken, c.InsecureNoAPIAuth = tok, false
		c.DrainRate = 1000
		c.DrainJitter = 2 * time.Second
	})
	const n = 10
	conns := map[string]*rawConn{}
	for i := range n {
		d := fmt.Sprintf("d%d", i)
		conns[d] = dial(t, srv.Addrs().TCP)
		conns[d].welcome(d, 0)
	}
	var e *adminapi.Error
	if _, err := adminClient(srv, "wrong").Shed(context.Background(), 1); !errors.As(err, &e) || e.Status != 401 {
		t.Fatalf("shed with a wrong token: %v", err)
	}
	if _, err := adminClient(srv, tok).Shed(context.Background(), 0); !errors.As(err, &e) || e.Status != 400 {
		t.Fatalf("shed 0: %v", err)
	}
	api := adminClient(srv, tok)
	if info, err := api.Server(context.Background()); err != nil || info != (adminapi.ServerInfo{Name: "pod-a", Connections: n}) {
		t.Fatalf("GET /v1/server: %+v %v", info, err)
	}
	res, err := api.Shed(context.Background(), 4)
	if err != nil || res != (adminapi.ShedStarted{Shed: 4, Connections: n}) {
		t.Fatalf("shed 4: %+v %v", res, err)
	}
	// Each device leaves at its GOAWAY, as a client would.
	type goaway struct {
		device string
		hint   int64
	}
	got := make(chan goaway, n)
	for d, c := range conns {
		go func() {
			_ = c.nc.SetReadDeadline(time.Now().Add(time.Minute))
			typ, body, err := c.r.ReadFrame()
			var g protocol.GoAway
			if err != nil || typ != protocol.TypeGoAway || protocol.ParseJSON(body, &g) != nil {
				g.ReconnectAfterMs = -1
			}
			c.nc.Close()
			got <- goaway{d, g.ReconnectAfterMs}
		}()
	}
	seen := map[string]bool{}
	hints := map[int64]bool{}
	collect := func(k int) {
		for range k {
			g := <-got
			if g.hint < 0 || g.hint > 2000 || seen[g.device] {
				t.Fatalf("%s: GOAWAY hint %d (or no GOAWAY, or a second one)", g.device, g.hint)
			}
			seen[g.device], hints[g.hint] = true, true
		}
	}
	collect(4)
	eventually(t, "the shed devices gone", func() bool { return srv.Connections() == n-4 })
	if code, _ := apiWithToken(t, srv, tok, "GET", "/readyz"); code != 200 {
		t.Fatalf("readyz after a shed: %d, want 200", code)
	}
	// Asking for more than there are sheds the rest, none twice: the
	// first shed picked exactly 4.
	res, err = api.Shed(context.Background(), 100)
	if err != nil || res.Shed != n-4 || res.Connections != n-4 {
		t.Fatalf("shed 100: %+v %v", res, err)
	}
	collect(n - 4)
	if len(hints) < 2 {
		t.Fatalf("reconnect hints not jittered: %v", hints)
	}
	eventually(t, "every device gone", func() bool { return srv.Connections() == 0 })
	// A draining server sheds nothing: the drain moves everyone.
	c := dial(t, srv.Addrs().TCP)
	c.welcome("x", 0)
	srv.DrainAfter(time.Hour)
	if res, err := api.Shed(context.Background(), 1); err != nil || res.Shed != 0 {
		t.Fatalf("shed while draining: %+v %v", res, err)
	}
	if info, err := api.Server(context.Background()); err != nil || !info.Draining || info.Connections != 1 {
		t.Fatalf("GET /v1/server while draining: %+v %v", info, err)
	}
}

func apiWithToken(t *testing.T, srv target, tok, method, path string) (int, error) {
	t.Helper()
	req, err := adminClient(srv, tok).NewRequest(context.Background(), method, path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := adminClient(srv, tok).HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
