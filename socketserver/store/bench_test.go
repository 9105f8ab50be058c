package store_test

import (
	"fmt"
	"testing"
	"time"

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
			// The ACKs of 256 devices in one AckMany, as the server's
			// coalescer writes them; ns/device compares with Enqueue+Ack.
			b.Run("AckMany256", func(b *testing.B) {
				const n = 256
				acks := make([]store.DeviceAck, n)
				batches := make([]store.DeviceBatch, n)
				for i := range acks {
					d := fmt.Sprint("a", i)
					sess, err := st.Hello(ctx, d, store.Holder{}, 0)
					if err != nil {
						b.Fatal(err)
					}
					acks[i] = store.DeviceAck{Device: d, Epoch: sess.Epoch}
					batches[i] = store.DeviceBatch{Device: d, Msgs: []store.Outgoing{{Payload: payload}}}
				}
				for range b.N {
					b.StopTimer()
					for i, e := range st.EnqueueMany(ctx, batches, store.Limits{}) {
						if e.Err != nil {
							b.Fatal(e.Err)
						}
						acks[i].Seq = e.Stored[0].Seq
					}
					b.StartTimer()
					for _, err := range st.AckMany(ctx, acks) {
						if err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/device")
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

// BenchmarkRedisMemory measures what Redis holds per device session and
// per pending message (100-byte payload): INFO memory's used_memory before
// and after each step, over 10,000 devices; and MEMORY USAGE of one
// device's keys, an idempotency key among them. Run it once:
// go test -run '^$' -bench RedisMemory -benchtime 1x ./socketserver/store/
func BenchmarkRedisMemory(b *testing.B) {
	const devices, perDevice = 10000, 10
	for range b.N {
		r := redistest.Start(b)
		rdb := r.Client()
		st := store.NewRedis(rdb, "m")
		used := func() float64 {
			info, err := rdb.InfoMap(ctx, "memory").Result()
			if err != nil {
				b.Fatal(err)
			}
			var n float64
			fmt.Sscan(info["Memory"]["used_memory"], &n)
			return n
		}
		device := func(i int) string { return fmt.Sprintf("device-%06d", i) }
		payload := make([]byte, 100)
		start := used()
		for i := range devices {
			if _, err := st.Hello(ctx, device(i), store.Holder{Server: "socketcluster-7d9f8b6c5-x2x4q", Conn: uint64(i)}, 0); err != nil {
				b.Fatal(err)
			}
		}
		sessions := used()
		for i := range devices {
			msgs := make([]store.Outgoing, perDevice)
			for j := range msgs {
				msgs[j] = store.Outgoing{Payload: payload}
			}
			if _, err := st.EnqueueBatch(ctx, device(i), msgs, store.Limits{}); err != nil {
				b.Fatal(err)
			}
		}
		pending := used()
		for i := range devices {
			if _, err := store.Enqueue(ctx, st, device(i), store.Outgoing{Payload: payload, Key: fmt.Sprintf("order-%010d", i)},
				store.Limits{KeyTTL: 24 * time.Hour}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric((sessions-start)/devices, "B/session")
		b.ReportMetric((pending-sessions)/(devices*perDevice), "B/pending-msg")
		for _, k := range []string{"m:{device-000000}:s", "m:{device-000000}:q", "m:{device-000000}:k:order-0000000000"} {
			n, err := rdb.MemoryUsage(ctx, k).Result()
			if err != nil {
				b.Fatal(err)
			}
			b.Logf("MEMORY USAGE %s = %d bytes (%d messages of 100 bytes in the outbox)", k, n, perDevice+1)
		}
	}
}
