package store_test

import (
	"fmt"
	"testing"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// The session operations on the hot paths, one round trip each, run from
// many goroutines as connections do.
func BenchmarkStore(b *testing.B) {
	stores := map[string]func(b *testing.B) store.Store{
		"memory": func(*testing.B) store.Store { return store.NewMemory() },
		"redis":  func(b *testing.B) store.Store { return store.NewRedis(redistest.Start(b).Client(), "b") },
	}
	for _, name := range []string{"memory", "redis"} {
		b.Run(name, func(b *testing.B) {
			st := stores[name](b)
			payload := make([]byte, 64)
			b.Run("Hello", func(b *testing.B) {
				b.RunParallel(func(pb *testing.PB) {
					for i := 0; pb.Next(); i++ {
						if _, err := st.Hello(ctx, fmt.Sprint("h", i%1000), store.Holder{Server: "srv"}, 0); err != nil {
							b.Fatal(err)
						}
					}
				})
			})
			b.Run("Enqueue+Ack", func(b *testing.B) {
				sess, _ := st.Hello(ctx, "q", store.Holder{}, 0)
				for i := 0; i < b.N; i++ {
					r, err := store.Enqueue(ctx, st, "q", store.Outgoing{Payload: payload}, store.Limits{})
					if err != nil {
						b.Fatal(err)
					}
					if err := st.Ack(ctx, "q", sess.Epoch, r.Seq); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("Publish", func(b *testing.B) {
				sess, _ := st.Hello(ctx, "p", store.Holder{Server: "srv"}, 0)
				for i := 0; i < b.N; i++ {
					if _, err := st.Publish(ctx, "p", sess.Epoch, uint64(i+1), payload); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
