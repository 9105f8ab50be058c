package client_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/client"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// The tests in this file play the server side of SSE with httptest, for
// what a real server does rarely or never on purpose: a refusal with a
// retry hint, a wrong path, a stream gone silent, a PUBLISH answered 503.

// fakeSSE is a scripted SSE server: stream handles GET /sse; POSTs are
// recorded and answered by ack and publish.
type fakeSSE struct {
	*httptest.Server
	stream  func(w http.ResponseWriter, r *http.Request)
	ack     func(r *http.Request) (int, string)
	publish func(r *http.Request, body []byte) (int, string)

	mu        sync.Mutex
	acks      []uint64 // seq of each ACK request, in arrival order
	acksBusy  int      // ACK requests being answered now
	acksMax   int      // most ACK requests answered at one time
	published []string // "id=payload" of each PUBLISH request
	streams   int      // GET /sse requests
}

func newFakeSSE(t *testing.T) *fakeSSE {
	t.Helper()
	f := &fakeSSE{}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeSSE) addr() string { return f.URL + "/sse" }

func (f *fakeSSE) serve(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/sse":
		f.mu.Lock()
		f.streams++
		f.mu.Unlock()
		f.stream(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/sse/ack":
		seq, _ := strconv.ParseUint(r.URL.Query().Get("seq"), 10, 64)
		f.mu.Lock()
		f.acks = append(f.acks, seq)
		f.acksBusy++
		f.acksMax = max(f.acksMax, f.acksBusy)
		f.mu.Unlock()
		status, body := http.StatusNoContent, ""
		if f.ack != nil {
			status, body = f.ack(r)
		} else {
			time.Sleep(5 * time.Millisecond) // long enough for deliveries to pile up behind it
		}
		f.mu.Lock()
		f.acksBusy--
		f.mu.Unlock()
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	case r.Method == http.MethodPost && r.URL.Path == "/sse/publish":
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.published = append(f.published, r.URL.Query().Get("id")+"="+string(body))
		f.mu.Unlock()
		status, answer := f.publish(r, body)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, answer)
	default:
		http.NotFound(w, r)
	}
}

// startStream answers 200 with the event-stream headers.
func startStream(w http.ResponseWriter) http.Flusher {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fl := w.(http.Flusher)
	fl.Flush()
	return fl
}

func welcomeEvent(epoch uint64, heartbeatMs int64) string {
	return fmt.Sprintf("event: welcome\nretry: 2000\ndata: {\"server\":\"fake\",\"session_epoch\":%d,\"resumed\":false,\"heartbeat_ms\":%d,\"last_publish_id\":0,\"state\":{}}\n\n",
		epoch, heartbeatMs)
}

func TestSSERefusals(t *testing.T) {
	t.Run("server_full with a retry hint", func(t *testing.T) {
		f := newFakeSSE(t)
		f.stream = func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"code":"server_full","message":"over the connection limit","retry_after_ms":150}`)
		}
		d := runDevice(t, client.Config{Addr: f.addr(), Device: "sse-full"})
		eventually(t, "a refusal", func() bool { return len(d.eventsOf(client.EventDisconnected)) > 0 })
		ev := d.eventsOf(client.EventDisconnected)[0]
		var se *client.ServerError
		if ev.Reason != client.ReasonServerError || ev.Code != protocol.CodeServerFull || !errors.As(ev.Err, &se) ||
			se.RetryAfterMs != 150 || ev.Wait != 150*time.Millisecond {
			t.Fatalf("disconnect %+v, want server_full waiting 150ms", ev)
		}
	})

	t.Run("a path that is not an SSE endpoint", func(t *testing.T) {
		f := newFakeSSE(t)
		d := runDevice(t, client.Config{Addr: f.URL + "/events", Device: "sse-404"})
		eventually(t, "a failure", func() bool { return len(d.eventsOf(client.EventDisconnected)) > 0 })
		ev := d.eventsOf(client.EventDisconnected)[0]
		var he *client.SSEStatusError
		if ev.Reason != client.ReasonHandshake || !errors.As(ev.Err, &he) || !strings.HasPrefix(he.Status, "404") {
			t.Fatalf("disconnect %+v, want a handshake failure with an *SSEStatusError", ev)
		}
	})
}

// A stream that stops sending, keepalive comments included, is given up
// after a few heartbeat intervals, and the client connects again.
func TestSSESilentStreamIsDetected(t *testing.T) {
	f := newFakeSSE(t)
	f.stream = func(w http.ResponseWriter, r *http.Request) {
		fl := startStream(w)
		_, _ = io.WriteString(w, welcomeEvent(1, 100))
		fl.Flush()
		<-r.Context().Done() // silent, the connection open
	}
	d := runDevice(t, client.Config{Addr: f.addr(), Device: "sse-silent"})
	d.waitConnected(t, 1)
	eventually(t, "disconnect", func() bool { return len(d.eventsOf(client.EventDisconnected)) > 0 })
	ev := d.eventsOf(client.EventDisconnected)[0]
	if ev.Reason != client.ReasonServerSilent {
		t.Fatalf("disconnect %+v, want server_silent", ev)
	}
	if quiet := ev.At.Sub(d.eventsOf(client.EventConnected)[0].At); quiet < 200*time.Millisecond {
		t.Fatalf("gave up after %s of silence, before two heartbeat intervals", quiet)
	}
	d.waitConnected(t, 2)
}

// Keepalive comments alone keep a stream alive past the silence limit.
func TestSSEKeepaliveKeepsStream(t *testing.T) {
	f := newFakeSSE(t)
	var mu sync.Mutex
	keepalives := 0
	f.stream = func(w http.ResponseWriter, r *http.Request) {
		fl := startStream(w)
		_, _ = io.WriteString(w, welcomeEvent(1, 200))
		fl.Flush()
		tick := time.NewTicker(50 * time.Millisecond) // well within the interval, for a loaded machine
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				_, _ = io.WriteString(w, ":\n\n")
				fl.Flush()
				mu.Lock()
				keepalives++
				mu.Unlock()
			case <-r.Context().Done():
				return
			}
		}
	}
	d := runDevice(t, client.Config{Addr: f.addr(), Device: "sse-keepalive"})
	d.waitConnected(t, 1)
	// The silence limit is 2.5 intervals (500ms); 25 keepalives span more than twice that.
	eventually(t, "25 keepalives", func() bool { mu.Lock(); defer mu.Unlock(); return keepalives >= 25 })
	if evs := d.eventsOf(client.EventDisconnected); len(evs) > 0 {
		t.Fatalf("disconnected although the server sent keepalives: %+v", evs[0])
	}
}

// Deliveries in text (multi-line) and base64, ACKs coalesced with one
// request in flight, a PUBLISH answered 503 retried with the same id.
func TestSSEEventsAcksAndPublishRetry(t *testing.T) {
	const n = 300
	const base = uint64(1796220000000000)
	f := newFakeSSE(t)
	f.stream = func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok-1" || r.URL.Query().Get("device") != "sse-events" {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"code":"unauthorized","message":"wrong token"}`)
			return
		}
		fl := startStream(w)
		_, _ = io.WriteString(w, welcomeEvent(42, 15000))
		for i := 1; i <= n; i++ {
			seq := base + uint64(i)
			switch i % 3 {
			case 0:
				fmt.Fprintf(w, "event: deliver64\nid: %d\ndata: %s\n\n", seq, base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("m%d\r\x00", i))))
			case 1:
				fmt.Fprintf(w, "event: deliver\nid: %d\ndata: m%d\ndata: line 2\n\n", seq, i)
			default:
				fmt.Fprintf(w, "id: %d\nevent: deliver\r\ndata: m%d\r\n:comment\r\ndata:line 2\r\n\r\n", seq, i)
			}
			if i%50 == 0 {
				fl.Flush()
				time.Sleep(2 * time.Millisecond)
			}
		}
		_, _ = io.WriteString(w, "event: future-event\ndata: {}\n\n") // skipped
		fl.Flush()
		<-r.Context().Done()
	}
	attempts := 0
	f.publish = func(r *http.Request, body []byte) (int, string) {
		q := r.URL.Query()
		if q.Get("epoch") != "42" || q.Get("device") != "sse-events" || r.Header.Get("Authorization") != "Bearer tok-1" {
			return http.StatusBadRequest, `{"code":"bad_frame","message":"wrong parameters"}`
		}
		f.mu.Lock()
		attempts++
		first := attempts == 1
		f.mu.Unlock()
		if first {
			return http.StatusServiceUnavailable, `{"code":"unavailable","message":"store timeout","retry_after_ms":50}`
		}
		return http.StatusOK, `{"id":` + q.Get("id") + `,"duplicate":false}`
	}
	var acked []string
	d := runDevice(t, client.Config{Addr: f.addr(), Device: "sse-events", Token: "tok-1",
		OnPubAck: func(id uint64, payload []byte) { acked = append(acked, fmt.Sprintf("%d=%s", id, payload)) }})
	if w := d.waitConnected(t, 1).Welcome; w.SessionEpoch != 42 || w.HeartbeatMs != 15000 {
		t.Fatalf("WELCOME %+v", w)
	}
	eventually(t, fmt.Sprintf("%d messages", n), func() bool { s, _ := d.received(); return len(s) >= n })
	seqs, msgs := d.received()
	for i, seq := range seqs {
		want := fmt.Sprintf("m%d\nline 2", i+1)
		if (i+1)%3 == 0 {
			want = fmt.Sprintf("m%d\r\x00", i+1)
		}
		if seq != base+uint64(i+1) || msgs[i] != want {
			t.Fatalf("message %d is seq %d %q, want seq %d %q", i, seq, msgs[i], base+uint64(i+1), want)
		}
	}
	eventually(t, "the last seq acknowledged", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.acks) > 0 && f.acks[len(f.acks)-1] == base+n
	})
	f.mu.Lock()
	acks, most := append([]uint64(nil), f.acks...), f.acksMax
	f.mu.Unlock()
	if len(acks) >= n/2 || most != 1 {
		t.Fatalf("%d ACK requests for %d deliveries, at most %d at a time; want them coalesced, one at a time", len(acks), n, most)
	}
	for i := 1; i < len(acks); i++ {
		if acks[i] <= acks[i-1] {
			t.Fatalf("ACK seqs not increasing: %v", acks)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if id, err := d.Publish(ctx, []byte("up 1")); err != nil || id != 1 {
		t.Fatalf("Publish = %d, %v", id, err)
	}
	f.mu.Lock()
	published := fmt.Sprint(f.published)
	f.mu.Unlock()
	if published != "[1=up 1 1=up 1]" {
		t.Fatalf("PUBLISH requests %s, want the same id twice", published)
	}
	if st := d.Stats(); st.Retransmits != 1 || st.PublishesAcked != 1 || fmt.Sprint(acked) != "[1=up 1]" {
		t.Fatalf("stats %+v, OnPubAck %v", st, acked)
	}
	if got := len(d.eventsOf(client.EventDisconnected)); got != 0 {
		t.Fatalf("%d disconnects: %+v", got, d.eventsOf(client.EventDisconnected))
	}
}

// A PUBLISH answered 409 session_taken_over stops the client, as the
// ERROR frame does on the other transports.
func TestSSEPublishTakenOver(t *testing.T) {
	f := newFakeSSE(t)
	f.stream = func(w http.ResponseWriter, r *http.Request) {
		fl := startStream(w)
		_, _ = io.WriteString(w, welcomeEvent(7, 15000))
		fl.Flush()
		<-r.Context().Done()
	}
	f.publish = func(*http.Request, []byte) (int, string) {
		return http.StatusConflict, `{"code":"session_taken_over","message":"a newer connection of this device"}`
	}
	d := runDevice(t, client.Config{Addr: f.addr(), Device: "sse-taken"})
	d.waitConnected(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.PublishAsync(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.runErr:
		var se *client.ServerError
		if !errors.Is(err, client.ErrTakenOver) || !errors.As(err, &se) || se.Code != protocol.CodeSessionTakenOver {
			t.Fatalf("Run returned %v, want ErrTakenOver", err)
		}
		d.runErr <- err // for the cleanup
	case <-ctx.Done():
		t.Fatal("the client kept running after 409 session_taken_over")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.streams != 1 {
		t.Fatalf("%d stream requests, want no reconnect after a takeover", f.streams)
	}
}
