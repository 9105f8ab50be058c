package socketserver_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

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

// shedWith asks srv to shed with a target and a refusal bound.
func shedWith(t *testing.T, srv target, req adminapi.ShedRequest) adminapi.ShedStarted {
	t.Helper()
	res, err := adminClient(srv, "").ShedWith(context.Background(), req)
	if err != nil {
		t.Fatalf("shed %+v: %v", req, err)
	}
	return res
}

// expectGoAway reads a GOAWAY with reason and a hint within the jitter.
func (c *rawConn) expectGoAway(reason string, jitter time.Duration) protocol.GoAway {
	c.t.Helper()
	var g protocol.GoAway
	if err := protocol.ParseJSON(c.expect(protocol.TypeGoAway).body, &g); err != nil || g.Reason != reason ||
		g.ReconnectAfterMs < 0 || g.ReconnectAfterMs > jitter.Milliseconds() {
		c.t.Fatalf("GOAWAY %+v (%v), want reason %q and a hint within %s", g, err, reason, jitter)
	}
	return g
}

// A shed with a target turns away new devices while the server holds at
// least the target, with the drain's jittered hints, so that they land on
// the emptier pods; devices it holds still take over their session here;
// the refusal ends for good once the server holds fewer.
func TestShedRefusesNewDevicesAtTarget(t *testing.T) {
	const jitter = 2 * time.Second
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.DrainRate = 1000
		c.DrainJitter = jitter
	})
	held := map[string]*rawConn{}
	for _, d := range []string{"a", "b", "c", "d"} {
		held[d] = dial(t, srv.Addrs().TCP)
		held[d].welcome(d, 0)
	}
	frames := map[string]<-chan frame{}
	for d, c := range held {
		frames[d] = pump(c)
	}
	// Shed one of four, down to 3; the shed device leaves at its GOAWAY.
	if res := shedWith(t, srv, adminapi.ShedRequest{Count: 1, Target: 3, RefuseForMs: time.Hour.Milliseconds()}); res.Shed != 1 {
		t.Fatalf("shed: %+v", res)
	}
	var shed string
	eventually(t, "the GOAWAY of the shed device", func() bool {
		for d, ch := range frames {
			select {
			case f := <-ch:
				if f.typ != protocol.TypeGoAway {
					t.Fatalf("%s got %v, want GOAWAY", d, f)
				}
				shed = d
				return true
			default:
			}
		}
		return false
	})
	// Straight back, its old connection not yet closed: it was sent away,
	// so it is refused like a new device, not taken over here.
	back := dial(t, srv.Addrs().TCP)
	back.hello(shed, 0)
	back.expectGoAway("draining", jitter)
	back.nc.Close()
	held[shed].nc.Close()
	delete(held, shed)
	delete(frames, shed)
	eventually(t, "the shed device gone", func() bool { return srv.Connections() == 3 })

	// New devices are refused, again and again, with jittered hints.
	hints := map[int64]bool{}
	for i := range 8 {
		c := dial(t, srv.Addrs().TCP)
		c.hello(fmt.Sprintf("new%d", i), 0)
		hints[c.expectGoAway("draining", jitter).ReconnectAfterMs] = true
		c.nc.Close()
	}
	if len(hints) < 2 {
		t.Fatalf("reconnect hints not jittered: %v", hints)
	}
	if n := metric(t, srv, "socketserver_shed_refused_hellos_total"); n != 9 {
		t.Fatalf("socketserver_shed_refused_hellos_total %v, want 9", n)
	}
	// A refused HELLO was not accepted: the store never saw the device.
	if _, err := adminClient(srv, "").Device(context.Background(), "new0"); err == nil {
		t.Fatal("a refused device has a session")
	}
	eventually(t, "the refused connections gone", func() bool { return srv.Connections() == 3 })

	// A device held here takes its session over on a new connection, and
	// resumes it, though the server holds its target.
	var name string
	for name = range held {
		break
	}
	again := dial(t, srv.Addrs().TCP)
	if w := again.welcome(name, 0); !w.Resumed {
		t.Fatalf("takeover not resumed: %+v", w)
	}
	if f := <-frames[name]; f.typ != protocol.TypeError || !strings.Contains(string(f.body), string(protocol.CodeSessionTakenOver)) {
		t.Fatalf("the taken-over connection got %v", f)
	}
	send(t, srv, name, "m")
	if seq, payload := again.deliver(); payload != "m" {
		t.Fatalf("deliver after takeover: %d %q", seq, payload)
	}
	held[name] = again
	eventually(t, "the taken-over connection gone", func() bool { return srv.Connections() == 3 })

	// Below the target the server welcomes new devices again, and keeps
	// doing so when it is back at the target: the refusal is over.
	for d, c := range held {
		c.nc.Close()
		delete(held, d)
		break
	}
	eventually(t, "2 connections", func() bool { return srv.Connections() == 2 })
	for _, d := range []string{"x", "y", "z"} {
		dial(t, srv.Addrs().TCP).welcome(d, 0)
	}
}

// The refusal never outlives its bound: a server that still holds its
// target welcomes new devices once refuse_for_ms passed (the operator
// that asked may be gone).
func TestShedRefusalEnds(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.DrainJitter = time.Second })
	for _, d := range []string{"a", "b", "c"} {
		dial(t, srv.Addrs().TCP).welcome(d, 0)
	}
	// One GOAWAY'd connection stays open (its device does not leave): the
	// server keeps holding 3, above its target of 1.
	shedWith(t, srv, adminapi.ShedRequest{Count: 1, Target: 1, RefuseForMs: 300})
	// Every attempt is refused or welcomed, nothing else, until the bound
	// passes.
	eventually(t, "a new device welcomed after refuse_for_ms", func() bool {
		n := dial(t, srv.Addrs().TCP)
		defer n.nc.Close()
		n.hello("late", 0)
		f := n.expectAny(protocol.TypeWelcome, protocol.TypeGoAway)
		return f.typ == protocol.TypeWelcome
	})
}

// expectAny reads a frame of one of the types.
func (c *rawConn) expectAny(types ...byte) frame {
	c.t.Helper()
	f, err := c.read()
	if err != nil {
		c.t.Fatalf("waiting for a frame: %v", err)
	}
	for _, typ := range types {
		if f.typ == typ {
			return f
		}
	}
	c.t.Fatalf("got %v", f)
	return f
}

// Bad shed requests get bad_body and change nothing.
func TestShedRequestValidation(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	for _, body := range []string{
		`{"count":1,"target":3}`,                         // no bound
		`{"count":1,"target":3,"refuse_for_ms":3600001}`, // beyond an hour
		`{"count":1,"refuse_for_ms":1000}`,               // a bound without a target
		`{"count":1,"target":-1,"refuse_for_ms":1000}`,
		`{"count":1,"rate":-5}`,
		`{"count":0,"target":3,"refuse_for_ms":1000}`,
	} {
		code, resp := api(t, srv, "POST", "/shed", body)
		if code != 400 || !strings.Contains(resp, "bad_body") || !strings.Contains(resp, "refuse_for_ms") {
			t.Errorf("POST /shed %s: %d %s, want 400 bad_body with the rule", body, code, resp)
		}
	}
	dial(t, srv.Addrs().TCP).welcome("still-welcome", 0)
}

// MQTT devices are refused by the same decision: CONNACK "use another
// server" (0x9C) on 5.0, "server unavailable" on 3.1.1.
func TestShedRefusesMQTT(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	for _, d := range []string{"a", "b"} {
		dial(t, srv.Addrs().TCP).welcome(d, 0)
	}
	shedWith(t, srv, adminapi.ShedRequest{Count: 1, Target: 1, RefuseForMs: time.Hour.Milliseconds()})
	for version, want := range map[byte]byte{5: 0x9C, 4: 3} {
		m := dialMQTT(t, srv, version)
		m.write(connectPacket("m", token("m", time.Hour)))
		if pk := m.expect(packets.Connack); pk.ReasonCode != want {
			t.Fatalf("MQTT %d CONNACK %#x, want %#x", version, pk.ReasonCode, want)
		}
		m.expectEnd(0)
	}
}

// pump reads c's frames into a channel until the connection ends, so that
// a test can wait for whichever of many connections gets a frame.
func pump(c *rawConn) <-chan frame {
	ch := make(chan frame, 16)
	go func() {
		defer close(ch)
		for {
			_ = c.nc.SetReadDeadline(time.Now().Add(time.Minute))
			typ, body, err := c.r.ReadFrame()
			if err != nil {
				return
			}
			ch <- frame{typ, bytes.Clone(body)}
		}
	}()
	return ch
}

// gRPC streams and SSE streams are refused by the same decision: a GOAWAY
// "draining" (SSE: a goaway event whose retry is the hint) ends them.
func TestShedRefusesGRPCAndSSE(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.DrainJitter = time.Second })
	for _, d := range []string{"a", "b"} {
		dial(t, srv.Addrs().TCP).welcome(d, 0)
	}
	shedWith(t, srv, adminapi.ShedRequest{Count: 1, Target: 1, RefuseForMs: time.Hour.Milliseconds()})

	l, err := dialGRPCLink(srv.Addrs().GRPC)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	if err := l.send(protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "g", Token: token("g", time.Hour)})); err != nil {
		t.Fatal(err)
	}
	typ, body, err := l.read()
	var g protocol.GoAway
	if err != nil || typ != protocol.TypeGoAway || protocol.ParseJSON(body, &g) != nil || g.Reason != "draining" {
		t.Fatalf("gRPC HELLO: %s %s %v, want GOAWAY draining", protocol.TypeName(typ), body, err)
	}

	resp, err := sseOpen(t, srv, "s", nil, http.Header{"Authorization": {"Bearer " + token("s", time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	d := &sseDevice{t: t, device: "s", resp: resp, lines: bufio.NewReader(resp.Body)}
	ev := d.expect("goaway")
	if err := json.Unmarshal([]byte(ev.data), &g); err != nil || g.Reason != "draining" || g.ReconnectAfterMs != ev.retry {
		t.Fatalf("SSE goaway %+v: %v", ev, err)
	}
	d.ended()
	if n := metric(t, srv, "socketserver_shed_refused_hellos_total"); n != 2 {
		t.Fatalf("socketserver_shed_refused_hellos_total %v, want 2", n)
	}
}
