package adminapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/socketcluster/socketcluster/internal/servertest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/client"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

const token = "adminapi-test-token"

// startServer runs a server on the embedded store with an API token.
func startServer(t *testing.T) (*socketserver.Server, *adminapi.Client) {
	t.Helper()
	srv := servertest.Start(t, socketserver.Config{TCPAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", ServerName: "pod-a",
		InsecureNoAuth: true, APIToken: token, MaxFrameBytes: 1024, DrainTimeout: 5 * time.Second}, store.NewMemory(), logr.Discard())
	return srv, &adminapi.Client{BaseURL: "http://" + srv.Addrs().Admin, Token: token, HTTP: &http.Client{Timeout: 10 * time.Second}}
}

func TestValidKey(t *testing.T) {
	for k, want := range map[string]bool{
		"a": true, "order-17/retry": true, " ~": true, strings.Repeat("k", 128): true,
		"": false, strings.Repeat("k", 129): false, "tab\there": false, "new\nline": false, "del\x7f": false, "ключ": false,
	} {
		if got := adminapi.ValidKey(k); got != want {
			t.Errorf("ValidKey(%q) = %t, want %t", k, got, want)
		}
	}
}

// Every call of the client against a real server: the typed answers
// decode, idempotency keys answer duplicates, errors come back typed.
func TestClientRoundTrip(t *testing.T) {
	srv, api := startServer(t)
	ctx := context.Background()

	first, err := api.Send(ctx, "pos-1", []byte("one"), "k1")
	if err != nil || first.Seq == 0 || first.Duplicate {
		t.Fatalf("Send: %+v %v", first, err)
	}
	again, err := api.Send(ctx, "pos-1", []byte("one"), "k1")
	if err != nil || again.Seq != first.Seq || !again.Duplicate {
		t.Fatalf("Send with the same key: %+v %v, want seq %d duplicate", again, err, first.Seq)
	}
	plain, err := api.Send(ctx, "pos-1", []byte("two"), "")
	if err != nil || plain.Seq != first.Seq+1 || plain.Duplicate {
		t.Fatalf("Send without key: %+v %v", plain, err)
	}

	res, err := api.SendBatch(ctx, []adminapi.BatchMessage{
		{Device: "pos-1", Payload: []byte("three"), Key: "k3"},
		{Device: "pos-2", Payload: []byte("x")},
		{Device: "pos-1", Payload: []byte("one"), Key: "k1"},
		{Device: "bad device", Payload: []byte("x")},
		{Device: "pos-2", Payload: []byte("y"), Key: strings.Repeat("k", 129)},
		{Device: "pos-2", Payload: make([]byte, 1024)},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []adminapi.BatchResult{{Seq: plain.Seq + 1}, {Seq: res[1].Seq}, {Seq: first.Seq, Duplicate: true},
		{Error: adminapi.CodeBadDevice}, {Error: adminapi.CodeBadKey}, {Error: adminapi.CodeTooLarge}}
	for i, w := range want {
		r := res[i]
		if r.Seq != w.Seq || r.Duplicate != w.Duplicate || r.Error != w.Error || (r.Error != "") != (r.Message != "") {
			t.Errorf("batch result %d: %+v, want %+v", i, r, w)
		}
	}
	if res[1].Seq == 0 {
		t.Errorf("batch result 1 has no seq: %+v", res[1])
	}

	if err := api.SetState(ctx, "pos-1", map[string]int{"till": 4}); err != nil {
		t.Fatal(err)
	}
	info, err := api.Device(ctx, "pos-1")
	if err != nil || info.Device != "pos-1" || info.Connected || info.LastSeq != plain.Seq+1 || info.Pending != 3 || string(info.State) != `{"till":4}` {
		t.Fatalf("Device: %+v %v", info, err)
	}
	_, err = api.Device(ctx, "nobody")
	var e *adminapi.Error
	if !errors.As(err, &e) || e.Status != 404 || e.Code != adminapi.CodeNotFound || !e.Refused() || e.Ambiguous() {
		t.Fatalf("unknown device: %v", err)
	}
	if err := api.SetState(ctx, "pos-1", []int{1}); !errors.As(err, &e) || e.Code != adminapi.CodeBadState {
		t.Fatalf("non-object state: %v", err)
	}

	// Upstream of the embedded store: a device publishes, the backend
	// reads and acknowledges.
	dctx, stop := context.WithCancel(ctx)
	dev := client.New(client.Config{Addr: srv.Addrs().TCP, Device: "pos-3", Token: "any"})
	done := make(chan struct{})
	go func() { defer close(done); _ = dev.Run(dctx) }()
	defer func() { stop(); <-done }()
	id, err := dev.Publish(ctx, []byte("sale 42"))
	if err != nil {
		t.Fatal(err)
	}
	page, err := api.ReadUpstream(ctx, 0, 10)
	if err != nil || len(page.Entries) != 1 {
		t.Fatalf("ReadUpstream: %+v %v", page, err)
	}
	if e := page.Entries[0]; e.Device != "pos-3" || e.ID != id || string(e.Payload) != "sale 42" || page.Next != e.Seq {
		t.Fatalf("entry %+v next %d, want device pos-3 id %d", e, page.Next, id)
	}
	if err := api.AckUpstream(ctx, page.Next); err != nil {
		t.Fatal(err)
	}
	if page, err := api.ReadUpstream(ctx, 0, 10); err != nil || len(page.Entries) != 0 || page.Next != 0 {
		t.Fatalf("after ack: %+v %v", page, err)
	}

	if remaining, err := api.Drain(ctx, true); err != nil || remaining != 0 {
		t.Fatalf("Drain: %d %v", remaining, err)
	}
}

// A 4xx is a refusal, a missing or 5xx answer after the request was
// written is ambiguous, a request that never left is not sent.
func TestErrorKinds(t *testing.T) {
	srv, api := startServer(t)
	ctx := context.Background()
	check := func(what string, err error, status int, code string, refused, ambiguous, notSent bool) *adminapi.Error {
		t.Helper()
		var e *adminapi.Error
		if !errors.As(err, &e) {
			t.Fatalf("%s: %T %v, want *adminapi.Error", what, err, err)
		}
		if e.Status != status || e.Code != code || e.Refused() != refused || e.Ambiguous() != ambiguous || e.NotSent() != notSent ||
			adminapi.IsRefused(err) != refused || adminapi.IsAmbiguous(err) != ambiguous || adminapi.IsNotSent(err) != notSent {
			t.Fatalf("%s: %+v (refused %t ambiguous %t not sent %t)", what, e, e.Refused(), e.Ambiguous(), e.NotSent())
		}
		return e
	}

	noToken := &adminapi.Client{BaseURL: srv.Addrs().Admin} // no scheme: http
	_, err := noToken.Send(ctx, "d", []byte("x"), "")
	check("no token", err, 401, adminapi.CodeUnauthorized, true, false, false)
	_, err = api.Send(ctx, "d", []byte("x"), "ключ")
	check("bad key", err, 400, adminapi.CodeBadKey, true, false, false)
	_, err = api.Send(ctx, "d", make([]byte, 1016), "")
	check("too large", err, 413, adminapi.CodeTooLarge, true, false, false)

	// Nothing listens: refused before anything was written.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := l.Addr().String()
	l.Close()
	_, err = (&adminapi.Client{BaseURL: closed}).Send(ctx, "d", []byte("x"), "k")
	check("connection refused", err, 0, "", false, false, true)

	// The server takes the request and drops the connection unanswered.
	got := make(chan string, 1)
	drop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.Header.Get(adminapi.HeaderIdempotencyKey):
		default:
		}
		nc, _, _ := w.(http.Hijacker).Hijack()
		nc.Close()
	}))
	defer drop.Close()
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	_, err = (&adminapi.Client{BaseURL: drop.URL, HTTP: fresh}).Send(ctx, "d", []byte("x"), "k-7")
	check("dropped after the request", err, 0, "", false, true, false)
	if k := <-got; k != "k-7" {
		t.Fatalf("the server saw key %q, want k-7", k)
	}

	// 503 with Retry-After: the store may have stored it.
	unavailable := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "2")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(adminapi.ErrorBody{Error: adminapi.CodeUnavailable, Message: "store timeout"})
	}))
	defer unavailable.Close()
	_, err = (&adminapi.Client{BaseURL: unavailable.URL}).Send(ctx, "d", []byte("x"), "k")
	if e := check("503", err, 503, adminapi.CodeUnavailable, false, true, false); e.RetryAfter != 2*time.Second || e.Message != "store timeout" {
		t.Fatalf("503: %+v", e)
	}

	// No answer within the client's timeout, after the request was written.
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
	defer slow.Close()
	defer close(release)
	_, err = (&adminapi.Client{BaseURL: slow.URL, HTTP: &http.Client{Timeout: 200 * time.Millisecond}}).Send(ctx, "d", []byte("x"), "k")
	check("timeout", err, 0, "", false, true, false)
}
