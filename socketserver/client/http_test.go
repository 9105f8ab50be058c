package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/client"
)

// A TCP address that is an HTTP server fails with an *HTTPResponseError at
// once (not after the handshake timeout), and Run keeps retrying it.
func TestHTTPServerIsRecognised(t *testing.T) {
	hs := httptest.NewServer(http.NotFoundHandler())
	defer hs.Close()
	addr := hs.Listener.Addr().String()

	events := make(chan client.Event, 16)
	c := client.New(client.Config{Addr: addr, Device: "kiosk-http", HandshakeTimeout: time.Minute,
		BackoffMin: time.Millisecond, BackoffMax: 10 * time.Millisecond,
		OnEvent: func(ev client.Event) {
			select {
			case events <- ev:
			default:
			}
		}})
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()
	defer func() { cancel(); <-runErr }()

	timeout := time.After(10 * time.Second)
	for i := 0; i < 2; i++ { // the first failure and its retry
		select {
		case ev := <-events:
			var he *client.HTTPResponseError
			if ev.Type != client.EventDisconnected || ev.Reason != client.ReasonHandshake || !errors.As(ev.Err, &he) {
				t.Fatalf("event %+v, want a handshake failure with an *HTTPResponseError", ev)
			}
			if he.Addr != addr || he.Status != "HTTP/1.1 400 Bad Request" {
				t.Fatalf("HTTPResponseError %+v", he)
			}
			if msg := he.Error(); !strings.Contains(msg, "answered HTTP") || !strings.Contains(msg, "ws://"+addr+"/ws") ||
				!strings.Contains(msg, "http://"+addr+"/sse") {
				t.Fatalf("error text %q", msg)
			}
		case <-timeout:
			t.Fatal("no failure reported within 10s (the handshake timeout is a minute)")
		}
	}
}
