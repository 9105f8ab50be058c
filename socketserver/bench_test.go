package socketserver_test

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// The write path: a message stored (embedded store), handed to the
// device's connection, flushed by its writer and read by the device over
// loopback TCP, which ACKs now and then.
func BenchmarkDeliverWritePath(b *testing.B) {
	st := store.NewMemory()
	srv := startServer(b, st, "pod-a", nil)
	c := dial(b, srv.Addrs().TCP)
	c.welcome("d", 0)
	payload := bytes.Repeat([]byte("p"), 64)
	done := make(chan error, 1)
	go func() {
		for i := 1; i <= b.N; i++ {
			f, err := c.read()
			if err == nil && f.typ != protocol.TypeDeliver {
				err = fmt.Errorf("got %v", f)
			}
			if err != nil {
				done <- err
				return
			}
			if i%1000 == 0 {
				c.ack(uint64(i))
			}
		}
		done <- nil
	}()
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		if _, err := store.Enqueue(context.Background(), st, "d", store.Outgoing{Payload: payload}, store.Limits{}); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// PUBLISH -> store -> PUBACK round trips of many devices at once
// (embedded store; the Redis scripts are measured in the store package).
func BenchmarkPublishRoundTrip(b *testing.B) {
	srv := startServer(b, store.NewMemory(), "pod-a", nil)
	var n atomic.Int64
	payload := bytes.Repeat([]byte("p"), 64)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := dial(b, srv.Addrs().TCP)
		c.welcome(fmt.Sprintf("d%d", n.Add(1)), 0)
		for id := uint64(1); pb.Next(); id++ {
			c.send(protocol.TypePublish, protocol.AppendSeqFrame(nil, protocol.TypePublish, id, payload)[5:])
			if f := c.expect(protocol.TypePubAck); len(f.body) != 8 {
				b.Fatalf("PUBACK body %x", f.body)
			}
		}
	})
}
