package store_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// AckMany answers each device as Ack would, across more devices than one
// script call takes.
func TestAckMany(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		const n = 300
		acks := make([]store.DeviceAck, 0, n+2)
		bases := make([]uint64, n)
		for i := range n {
			dev := fmt.Sprint("d", i)
			s := hello(t, st, dev, "a", 0)
			bases[i] = mustEnqueue(t, st, dev, 3)
			acks = append(acks, store.DeviceAck{Device: dev, Epoch: s.Epoch, Seq: bases[i] + uint64(1+i%3)})
		}
		old := hello(t, st, "fenced", "a", 0)
		hello(t, st, "fenced", "b", 0)
		acks = append(acks, store.DeviceAck{Device: "fenced", Epoch: old.Epoch, Seq: 1},
			store.DeviceAck{Device: "unknown", Epoch: 7, Seq: 1})
		errs := st.AckMany(ctx, acks)
		if len(errs) != len(acks) {
			t.Fatalf("%d answers for %d ACKs", len(errs), len(acks))
		}
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("d%d: %v", i, errs[i])
			}
			info, err := st.Device(ctx, fmt.Sprint("d", i))
			if err != nil || info.AckedSeq != acks[i].Seq || info.Pending != uint64(2-i%3) {
				t.Fatalf("d%d: %+v %v, want acked %d", i, info, err, acks[i].Seq)
			}
		}
		if !errors.Is(errs[n], store.ErrFenced) || !errors.Is(errs[n+1], store.ErrLost) {
			t.Fatalf("fenced: %v, unknown: %v", errs[n], errs[n+1])
		}
	})
}

// On a single node the ACKs of up to 256 devices go to Redis as one script call.
func TestAckManyScriptCalls(t *testing.T) {
	r := redistest.Start(t)
	st := store.NewRedis(r.Client(), "t")
	var acks []store.DeviceAck
	for i := range 300 {
		dev := fmt.Sprint("d", i)
		s := hello(t, st, dev, "a", 0)
		acks = append(acks, store.DeviceAck{Device: dev, Epoch: s.Epoch, Seq: mustEnqueue(t, st, dev, 1) + 1})
	}
	if err := st.Ack(ctx, "d0", acks[0].Epoch, acks[0].Seq); err != nil { // loads the script
		t.Fatal(err)
	}
	before := scriptCalls(t, r)
	for _, err := range st.AckMany(ctx, acks) {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := scriptCalls(t, r) - before; n != 2 {
		t.Fatalf("%d script calls for 300 devices, want 2", n)
	}
}

// scriptCalls is how many EVAL and EVALSHA calls Redis has run.
func scriptCalls(t *testing.T, r *redistest.Server) int {
	t.Helper()
	info, err := r.Client().Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(info, "\n") {
		name, stats, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || name != "cmdstat_eval" && name != "cmdstat_evalsha" {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(stats, "calls="), ",")
		c, err := strconv.Atoi(calls)
		if err != nil {
			t.Fatalf("commandstats line %q", line)
		}
		n += c
	}
	return n
}

// gatedStore records every AckMany and holds each until the test lets it go.
type gatedStore struct {
	store.Store
	entered chan []store.DeviceAck
	release chan struct{}
}

func (g *gatedStore) AckMany(ctx context.Context, acks []store.DeviceAck) []error {
	g.entered <- append([]store.DeviceAck(nil), acks...)
	<-g.release
	return g.Store.AckMany(ctx, acks)
}

func welcomed(t *testing.T, st store.Store, devices ...string) map[string]uint64 {
	t.Helper()
	epochs := map[string]uint64{}
	for _, d := range devices {
		epochs[d] = hello(t, st, d, "a", 0).Epoch
	}
	return epochs
}

// ACKs that arrive while a write is under way go out together in the next
// write, a device's later ACK replacing its earlier one.
func TestAckCoalescerBatches(t *testing.T) {
	mem := store.NewMemory()
	devs := make([]string, 100)
	for i := range devs {
		devs[i] = fmt.Sprint("d", i)
	}
	ep := welcomed(t, mem, append(devs, "first")...)
	for _, d := range devs {
		mustEnqueue(t, mem, d, 1)
	}
	g := &gatedStore{Store: mem, entered: make(chan []store.DeviceAck, 10), release: make(chan struct{})}
	a := store.NewAckCoalescer(g, 256, time.Millisecond, time.Second, nil)
	defer a.Close()
	a.Ack("first", ep["first"], 1, nil)
	if w := <-g.entered; len(w) != 1 || w[0].Device != "first" {
		t.Fatalf("first write %+v", w)
	}
	var mu sync.Mutex
	results := map[string]error{}
	for _, d := range devs {
		seq := uint64(1) // below every seq: acks nothing
		if d == "d5" {
			seq = 1 << 62
		}
		a.Ack(d, ep[d], seq, func(err error) { mu.Lock(); results[d] = err; mu.Unlock() })
	}
	a.Ack("d7", ep["d7"], 1<<62, func(err error) { mu.Lock(); results["d7"] = err; mu.Unlock() })
	a.Ack("d5", ep["d5"], 1, nil) // lower: ignored
	close(g.release)
	w := <-g.entered
	if len(w) != len(devs) {
		t.Fatalf("second write has %d devices, want %d", len(w), len(devs))
	}
	byDev := map[string]store.DeviceAck{}
	for _, x := range w {
		byDev[x.Device] = x
	}
	if byDev["d5"].Seq != 1<<62 || byDev["d7"].Seq != 1<<62 || byDev["d0"].Seq != 1 {
		t.Fatalf("d5 %+v, d7 %+v, d0 %+v", byDev["d5"], byDev["d7"], byDev["d0"])
	}
	a.Flush("d99")
	mu.Lock()
	defer mu.Unlock()
	if len(results) != len(devs) {
		t.Fatalf("%d results after the write, want %d", len(results), len(devs))
	}
	for d, err := range results {
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
	}
	for _, d := range []string{"d5", "d7"} {
		if info, _ := mem.Device(ctx, d); info.Pending != 0 {
			t.Fatalf("%s: %+v, want its message acked", d, info)
		}
	}
}

// Flush writes a device's ACK at once, and Close every queued one, however
// long the delay; a full batch does not wait for it either.
func TestAckCoalescerFlushAndClose(t *testing.T) {
	mem := store.NewMemory()
	ep := welcomed(t, mem, "a", "b", "c", "f1", "f2", "late", "stale")
	base := map[string]uint64{}
	for d := range ep {
		base[d] = mustEnqueue(t, mem, d, 2)
	}
	acked := func(d string) uint64 {
		info, err := mem.Device(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		return info.AckedSeq - base[d]
	}
	var writes []int
	var mu sync.Mutex
	a := store.NewAckCoalescer(mem, 2, time.Hour, time.Second, func(n int) { mu.Lock(); writes = append(writes, n); mu.Unlock() })

	a.Ack("a", ep["a"], base["a"]+1, nil)
	a.Flush("b") // nothing queued for b: does not write a
	if acked("a") != 0 {
		t.Fatal("a written before its flush")
	}
	a.Flush("a")
	if acked("a") != 1 {
		t.Fatalf("a acked %d after Flush, want 1", acked("a"))
	}

	full := make(chan error, 2)
	a.Ack("f1", ep["f1"], base["f1"]+2, func(err error) { full <- err })
	a.Ack("f2", ep["f2"], base["f2"]+2, func(err error) { full <- err })
	for range 2 {
		if err := <-full; err != nil {
			t.Fatal(err)
		}
	}

	stale := make(chan error, 1)
	hello(t, mem, "stale", "b", 0)
	a.Ack("stale", ep["stale"], base["stale"]+1, func(err error) { stale <- err })
	a.Ack("b", ep["b"], base["b"]+2, nil)
	a.Ack("c", ep["c"], base["c"]+1, nil)
	a.Close()
	if err := <-stale; !errors.Is(err, store.ErrFenced) {
		t.Fatalf("stale epoch: %v, want ErrFenced", err)
	}
	if acked("b") != 2 || acked("c") != 1 {
		t.Fatalf("after Close: b %d, c %d", acked("b"), acked("c"))
	}
	a.Ack("late", ep["late"], base["late"]+1, nil)
	if acked("late") != 1 {
		t.Fatal("an ACK after Close is not written at once")
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(writes) != "[1 2 2 1 1]" {
		t.Fatalf("writes of %v devices, want [1 2 2 1 1]", writes)
	}
}
