package client_test

import (
	"context"
	"testing"

	"github.com/socketcluster/socketcluster/socketserver/client"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// Publishes through a real server on the in-memory store: one round trip
// each (Publish) versus a window of 256 in flight (PublishAsync); over SSE
// the window changes nothing, as one PUBLISH request is in flight at a time.
func BenchmarkPublish(b *testing.B) {
	for _, transport := range []string{"tcp", "sse"} {
		for _, async := range []bool{false, true} {
			name := transport + "-" + map[bool]string{false: "sync", true: "window"}[async]
			b.Run(name, func(b *testing.B) { benchmarkPublish(b, transport, async, name) })
		}
	}
}

func benchmarkPublish(b *testing.B, transport string, async bool, name string) {
	s := startServer(b, "server-a", store.NewMemory(), nil)
	addr := s.Addrs().TCP
	if transport == "sse" {
		addr = "http://" + s.Addrs().WS + "/sse"
	}
	d := runDevice(b, client.Config{Addr: addr, Device: "bench-" + name})
	ctx := context.Background()
	payload := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	var last *client.Pending
	for range b.N {
		if !async {
			if _, err := d.Publish(ctx, payload); err != nil {
				b.Fatal(err)
			}
			continue
		}
		p, err := d.PublishAsync(ctx, payload)
		if err != nil {
			b.Fatal(err)
		}
		last = p
	}
	if last != nil {
		<-last.Done()
	}
}
