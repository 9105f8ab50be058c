package client_test

import (
	"context"
	"testing"

	"github.com/socketcluster/socketcluster/socketserver/client"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// Publishes through a real server on the in-memory store: one round trip
// each (Publish) versus a window of 256 in flight (PublishAsync).
func BenchmarkPublish(b *testing.B) {
	for _, async := range []bool{false, true} {
		name := map[bool]string{false: "sync", true: "window"}[async]
		b.Run(name, func(b *testing.B) {
			s := startServer(b, "server-a", store.NewMemory(), nil)
			d := runDevice(b, client.Config{Addr: s.Addrs().TCP, Device: "bench-" + name})
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
		})
	}
}
