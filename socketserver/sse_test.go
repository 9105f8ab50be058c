package socketserver_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// sseDevice is a device on the SSE mapping, written from the contract
// with net/http and a line parser, as a browser's EventSource reads it.
type sseDevice struct {
	t      testing.TB
	device string
	resp   *http.Response
	lines  *bufio.Reader
	epoch  uint64
	server string
}

type sseEvent struct {
	event, id, data string
	retry           int64
	comments        int // comment lines before it
}

// sseOpen starts the stream; query adds parameters, header headers.
func sseOpen(t testing.TB, srv target, device string, query url.Values, header http.Header) (*http.Response, error) {
	t.Helper()
	if query == nil {
		query = url.Values{}
	}
	if device != "" {
		query.Set("device", device)
	}
	req, _ := http.NewRequest("GET", "http://"+srv.Addrs().WS+"/sse?"+query.Encode(), nil)
	for k, v := range header {
		req.Header[k] = v
	}
	return sseHTTP.Do(req)
}

var sseHTTP = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

// sseConnect opens the stream with a bearer token and reads the welcome.
func sseConnect(t testing.TB, srv target, device string, lastEventID uint64) *sseDevice {
	t.Helper()
	h := http.Header{"Authorization": {"Bearer " + token(device, time.Hour)}}
	if lastEventID != 0 {
		h.Set("Last-Event-ID", strconv.FormatUint(lastEventID, 10))
	}
	resp, err := sseOpen(t, srv, device, nil, h)
	if err != nil {
		t.Fatal(err)
	}
	d := &sseDevice{t: t, device: device, resp: resp, lines: bufio.NewReader(resp.Body)}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /sse: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	ev := d.expect("welcome")
	var w protocol.Welcome
	if err := json.Unmarshal([]byte(ev.data), &w); err != nil {
		t.Fatal(err)
	}
	if ev.retry < 1000 || ev.retry > 3000 {
		t.Fatalf("welcome retry %d, want 1000-3000 ms", ev.retry)
	}
	d.epoch, d.server = w.SessionEpoch, w.Server
	return d
}

// next reads one event (comments are counted, not returned).
func (d *sseDevice) next() (sseEvent, error) {
	var ev sseEvent
	var data []string
	deadline := time.AfterFunc(10*time.Second, func() { d.resp.Body.Close() })
	defer deadline.Stop()
	for {
		line, err := d.lines.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if ev.event == "" && ev.id == "" && data == nil && ev.retry == 0 {
				continue
			}
			ev.data = strings.Join(data, "\n")
			return ev, nil
		}
		if strings.HasPrefix(line, ":") {
			ev.comments++
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			ev.event = value
		case "id":
			ev.id = value
		case "data":
			data = append(data, value)
		case "retry":
			ev.retry, _ = strconv.ParseInt(value, 10, 64)
		default:
			d.t.Fatalf("unknown field %q", line)
		}
	}
}

func (d *sseDevice) expect(event string) sseEvent {
	d.t.Helper()
	ev, err := d.next()
	if err != nil {
		d.t.Fatalf("waiting for %s: %v", event, err)
	}
	if ev.event != event {
		d.t.Fatalf("got event %+v, want %s", ev, event)
	}
	return ev
}

// deliver reads a deliver event: its seq and payload.
func (d *sseDevice) deliver() (uint64, string) {
	d.t.Helper()
	ev, err := d.next()
	if err != nil {
		d.t.Fatalf("waiting for a delivery: %v", err)
	}
	seq, err := strconv.ParseUint(ev.id, 10, 64)
	if err != nil {
		d.t.Fatalf("event %+v has no seq", ev)
	}
	switch ev.event {
	case "deliver":
		return seq, ev.data
	case "deliver64":
		b, err := base64.StdEncoding.DecodeString(ev.data)
		if err != nil {
			d.t.Fatalf("deliver64 %q: %v", ev.data, err)
		}
		return seq, string(b)
	}
	d.t.Fatalf("got %+v, want a delivery", ev)
	return 0, ""
}

// ended checks that the stream ends.
func (d *sseDevice) ended() {
	d.t.Helper()
	if ev, err := d.next(); err == nil {
		d.t.Fatalf("event after the end: %+v", ev)
	}
}

// post sends an ACK or PUBLISH to srv (any server).
func (d *sseDevice) post(srv target, path string, n uint64, body string) (int, string) {
	d.t.Helper()
	param := "seq"
	if path == "/sse/publish" {
		param = "id"
	}
	u := fmt.Sprintf("http://%s%s?device=%s&epoch=%d&%s=%d", srv.Addrs().WS, path, d.device, d.epoch, param, n)
	req, _ := http.NewRequest("POST", u, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token(d.device, time.Hour))
	resp, err := sseHTTP.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (d *sseDevice) ack(srv target, seq uint64) {
	d.t.Helper()
	if code, body := d.post(srv, "/sse/ack", seq, ""); code != 204 {
		d.t.Fatalf("POST /sse/ack: %d %s", code, body)
	}
}

// The whole mapping on one server: the request is the HELLO, deliveries
// are events with their seq as id (text, base64, empty), ACK and PUBLISH
// are POSTs answered once stored, and the HTTP details browsers need.
func TestSSESession(t *testing.T) {
	st := store.NewMemory()
	srv := startServer(t, st, "pod-a", nil)
	d := sseConnect(t, srv, "kiosk-1", 0)
	if d.server != "pod-a" || d.epoch == 0 {
		t.Fatalf("welcome: server %q epoch %d", d.server, d.epoch)
	}
	if got := d.resp.Header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Fatalf("Access-Control-Allow-Origin %q", got)
	}
	payloads := []string{"order 1", "two\nlines", "\xff\x00binary", "", "cr\r\nlf"}
	var seqs []uint64
	for _, p := range payloads {
		seqs = append(seqs, send(t, srv, "kiosk-1", p))
	}
	for i, want := range payloads {
		seq, got := d.deliver()
		if seq != seqs[i] || got != want {
			t.Fatalf("delivery %d: seq %d %q, want %d %q", i, seq, got, seqs[i], want)
		}
	}
	d.ack(srv, seqs[2])
	if info := deviceInfo(t, srv, "kiosk-1"); info.AckedSeq != seqs[2] || !info.Connected || info.Pending != 2 {
		t.Fatalf("after ACK: %+v", info)
	}

	if code, body := d.post(srv, "/sse/publish", 5, "button pressed"); code != 200 || body != `{"id":5,"duplicate":false}` {
		t.Fatalf("publish: %d %s", code, body)
	}
	if code, body := d.post(srv, "/sse/publish", 5, "button pressed"); code != 200 || body != `{"id":5,"duplicate":true}` {
		t.Fatalf("publish again: %d %s", code, body)
	}
	page := st.ReadUpstream(0, 10)
	if len(page) != 1 || page[0].Device != "kiosk-1" || page[0].ID != 5 || string(page[0].Payload) != "button pressed" {
		t.Fatalf("upstream: %+v", page)
	}

	// Bad requests get the ERROR body and the code's status.
	for _, c := range []struct {
		path string
		n    uint64
		body string
		want int
		code protocol.Code
	}{
		{"/sse/publish", 6, strings.Repeat("x", protocol.DefaultMaxFrameBytes), 413, protocol.CodeFrameTooLarge},
		{"/sse/nothing", 1, "", 404, protocol.CodeBadFrame},
	} {
		code, body := d.post(srv, c.path, c.n, c.body)
		var e protocol.ErrorBody
		if code != c.want || json.Unmarshal([]byte(body), &e) != nil || e.Code != c.code {
			t.Fatalf("POST %s: %d %s, want %d %s", c.path, code, body, c.want, c.code)
		}
	}
	req, _ := http.NewRequest("POST", "http://"+srv.Addrs().WS+"/sse/ack?device=kiosk-1&epoch=1&seq=1", nil)
	if resp, err := sseHTTP.Do(req); err != nil || resp.StatusCode != 401 {
		t.Fatalf("ACK without a token: %v %v", resp, err)
	}
	req, _ = http.NewRequest("OPTIONS", "http://"+srv.Addrs().WS+"/sse/publish", nil)
	req.Header.Set("Origin", "http://kiosk.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := sseHTTP.Do(req)
	if err != nil || resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "*" ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Fatalf("preflight: %v %v", resp, err)
	}
	resp.Body.Close()
}

// Refused streams answer in HTTP with the ERROR body, so that EventSource
// does not retry them; the token may come as a query parameter, and then
// names the device.
func TestSSEHandshake(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	errorOf := func(resp *http.Response, err error) (int, protocol.Code) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e protocol.ErrorBody
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Fatalf("%d without an ERROR body: %v", resp.StatusCode, err)
		}
		return resp.StatusCode, e.Code
	}
	for _, c := range []struct {
		name   string
		device string
		query  url.Values
		header http.Header
		status int
		code   protocol.Code
	}{
		{"no token", "k", nil, nil, 401, protocol.CodeUnauthorized},
		{"token of another device", "k", url.Values{"token": {token("other", time.Hour)}}, nil, 401, protocol.CodeUnauthorized},
		{"expired token", "k", url.Values{"token": {token("k", -time.Minute)}}, nil, 401, protocol.CodeUnauthorized},
		{"bad device", "k/1", url.Values{"token": {token("k/1", time.Hour)}}, nil, 400, protocol.CodeBadFrame},
		{"no device", "", nil, nil, 400, protocol.CodeBadFrame},
		{"bad last_seq", "k", url.Values{"last_seq": {"-1"}}, nil, 400, protocol.CodeBadFrame},
		{"bad Last-Event-ID", "k", nil, http.Header{"Last-Event-Id": {"x"}}, 400, protocol.CodeBadFrame},
	} {
		t.Run(c.name, func(t *testing.T) {
			if status, code := errorOf(sseOpen(t, srv, c.device, c.query, c.header)); status != c.status || code != c.code {
				t.Fatalf("%d %s, want %d %s", status, code, c.status, c.code)
			}
		})
	}
	t.Run("token parameter names the device", func(t *testing.T) {
		resp, err := sseOpen(t, srv, "", url.Values{"token": {token("kiosk-q", time.Hour)}}, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%v %v", resp, err)
		}
		defer resp.Body.Close()
		d := &sseDevice{t: t, resp: resp, lines: bufio.NewReader(resp.Body)}
		d.expect("welcome")
		if !deviceInfo(t, srv, "kiosk-q").Connected {
			t.Fatal("kiosk-q not connected")
		}
	})
	t.Run("wrong path", func(t *testing.T) {
		if status, _ := errorOf(http.Get("http://" + srv.Addrs().WS + "/events")); status != 404 {
			t.Fatalf("%d, want 404", status)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		off := startServer(t, store.NewMemory(), "pod-b", func(c *socketserver.Config) { c.DisableSSE = true })
		if status, _ := errorOf(sseOpen(t, off, "k", url.Values{"token": {token("k", time.Hour)}}, nil)); status != 404 {
			t.Fatalf("GET /sse with SSE disabled: %d, want 404", status)
		}
	})
}

// Resume on another server with the browser's Last-Event-ID, an ACK
// and a PUBLISH accepted by the server that does not hold the stream, a
// drain that moves the stream, and a kill: nothing acknowledged lost,
// nothing delivered twice past Last-Event-ID.
func TestSSEResumeDrainKill(t *testing.T) {
	r := redistest.Start(t)
	a := startServer(t, redisStore(t, r), "pod-a", nil)
	b := startServer(t, redisStore(t, r), "pod-b", nil)
	d := sseConnect(t, a, "kiosk-2", 0)
	first := send(t, b, "kiosk-2", "m1")
	if seq, p := d.deliver(); seq != first || p != "m1" {
		t.Fatalf("got %d %q", seq, p)
	}
	d.ack(b, first) // on the server without the stream
	send(t, a, "kiosk-2", "m2")
	send(t, a, "kiosk-2", "m3")
	seq2, _ := d.deliver()
	d.deliver()
	if code, body := d.post(b, "/sse/publish", 1, "from a"); code != 200 || !strings.Contains(body, `"duplicate":false`) {
		t.Fatalf("publish through pod-b: %d %s", code, body)
	}

	// Drain: GOAWAY with retry = reconnect_after_ms, then the stream ends.
	if code, _ := api(t, a, "POST", "/drain", ""); code != 202 {
		t.Fatalf("drain: %d", code)
	}
	ev := d.expect("goaway")
	var g protocol.GoAway
	if err := json.Unmarshal([]byte(ev.data), &g); err != nil || g.ReconnectAfterMs != ev.retry {
		t.Fatalf("goaway %+v: %v", ev, err)
	}
	d.ended()
	send(t, b, "kiosk-2", "m4")
	// The browser reconnects with Last-Event-ID = m2's seq: m3 again (not
	// acknowledged, at-least-once), then m4.
	d = sseConnect(t, b, "kiosk-2", seq2)
	if d.server != "pod-b" {
		t.Fatalf("resumed on %q", d.server)
	}
	var got []string
	for range 2 {
		_, p := d.deliver()
		got = append(got, p)
	}
	if strings.Join(got, ",") != "m3,m4" {
		t.Fatalf("after resume: %v, want m3,m4", got)
	}

	// A third server, then pod-b dies without a drain: the stream ends,
	// the device resumes on pod-c with what was sent meanwhile.
	c := startServer(t, redisStore(t, r), "pod-c", nil)
	info := deviceInfo(t, c, "kiosk-2")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = b.Shutdown(ctx)
	d.ended()
	m5 := send(t, c, "kiosk-2", "m5")
	d = sseConnect(t, c, "kiosk-2", info.LastSeq)
	if seq, p := d.deliver(); seq != m5 || p != "m5" {
		t.Fatalf("after the kill: %d %q, want %d m5", seq, p, m5)
	}
}

// Takeover across transports: a TCP HELLO takes an SSE device's session
// (its stream gets the error event and ends, its POSTs 409), and an SSE
// stream takes it back from TCP.
func TestSSETakeoverAcrossTransports(t *testing.T) {
	r := redistest.Start(t)
	a := startServer(t, redisStore(t, r), "pod-a", nil)
	b := startServer(t, redisStore(t, r), "pod-b", nil)
	d := sseConnect(t, a, "kiosk-3", 0)
	c := dial(t, b.Addrs().TCP)
	c.welcome("kiosk-3", 0)
	ev := d.expect("error")
	var e protocol.ErrorBody
	if err := json.Unmarshal([]byte(ev.data), &e); err != nil || e.Code != protocol.CodeSessionTakenOver {
		t.Fatalf("error event %+v", ev)
	}
	d.ended()
	for _, path := range []string{"/sse/ack", "/sse/publish"} {
		if code, body := d.post(a, path, 1, "late"); code != 409 || !strings.Contains(body, "session_taken_over") {
			t.Fatalf("%s with the old epoch: %d %s", path, code, body)
		}
	}
	d2 := sseConnect(t, a, "kiosk-3", 0)
	c.expectError(protocol.CodeSessionTakenOver)
	seq := send(t, b, "kiosk-3", "to the stream")
	if got, p := d2.deliver(); got != seq || p != "to the stream" {
		t.Fatalf("got %d %q", got, p)
	}
}

// The device sends nothing on its stream: the server writes a comment
// every heartbeat interval and does not end the stream for silence.
func TestSSEKeepalive(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.HeartbeatInterval = 100 * time.Millisecond
		c.HeartbeatTimeout = 300 * time.Millisecond
	})
	d := sseConnect(t, srv, "kiosk-4", 0)
	time.Sleep(time.Second) // > 3 heartbeat timeouts
	seq := send(t, srv, "kiosk-4", "still here")
	ev, err := d.next()
	if err != nil || ev.id != strconv.FormatUint(seq, 10) || ev.comments < 3 {
		t.Fatalf("after 1 s of silence: %+v %v, want the delivery after 3+ keepalives", ev, err)
	}
	// Input on the stream is read and ignored; its end ends the stream.
	nc, err := net.Dial("tcp", srv.Addrs().WS)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fmt.Fprintf(nc, "GET /sse?device=kiosk-5 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", token("kiosk-5", time.Hour))
	br := bufio.NewReader(nc)
	if line, _ := br.ReadString('\n'); line != "HTTP/1.1 200 OK\r\n" {
		t.Fatalf("status line %q", line)
	}
	eventually(t, "kiosk-5 connected", func() bool { return deviceInfo(t, srv, "kiosk-5").Connected })
	fmt.Fprintf(nc, "noise")
	time.Sleep(200 * time.Millisecond)
	if !deviceInfo(t, srv, "kiosk-5").Connected {
		t.Fatal("input on the stream ended it")
	}
	nc.(*net.TCPConn).CloseWrite()
	eventually(t, "kiosk-5 gone after its input ended", func() bool { return !deviceInfo(t, srv, "kiosk-5").Connected })
}
