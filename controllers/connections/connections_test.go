package connections_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/connections"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

func TestSum(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	ms := func(ago time.Duration) int64 { return now.Add(-ago).UnixMilli() }
	stats := map[string]store.ServerStats{
		"a":     {Connections: 10, UpdatedUnixMs: ms(time.Second)},
		"b":     {Connections: 5, Draining: true, UpdatedUnixMs: ms(30 * time.Second)},
		"stale": {Connections: 100, UpdatedUnixMs: ms(31 * time.Second)},
		"gone":  {Connections: 1000, UpdatedUnixMs: ms(0)},
	}
	if got := connections.Sum(stats, []string{"a", "b", "stale", "new"}, now); got != 15 {
		t.Errorf("sum %d, want 15: fresh stats of current pods only (draining pods still hold connections)", got)
	}
	if got := connections.Sum(stats, nil, now); got != 0 {
		t.Errorf("no pods: %d", got)
	}
}

func TestSummarizeStoreWarnings(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	fresh := now.Add(-time.Second).UnixMilli()
	aof := "appendonly is off: a Redis restart loses every unacknowledged message"
	lru := "maxmemory-policy allkeys-lru can evict sessions"
	stats := map[string]store.ServerStats{
		"a":     {Connections: 1, UpdatedUnixMs: fresh, StoreWarnings: []string{lru, aof}},
		"b":     {Connections: 2, UpdatedUnixMs: fresh, StoreWarnings: []string{aof}},
		"c":     {Connections: 3, UpdatedUnixMs: fresh},
		"stale": {UpdatedUnixMs: now.Add(-time.Minute).UnixMilli(), StoreWarnings: []string{"old news"}},
		"gone":  {UpdatedUnixMs: fresh, StoreWarnings: []string{"another cluster"}},
	}
	got := connections.Summarize(stats, []string{"a", "b", "c", "stale", "new"}, now)
	want := connections.Report{Connections: 6, Servers: 3, StoreWarnings: []string{aof, lru},
		Pods: map[string]store.ServerStats{"a": stats["a"], "b": stats["b"], "c": stats["c"]}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("report %+v, want %+v: distinct warnings and per-pod stats of fresh current pods, sorted", got, want)
	}
	if got := connections.Summarize(stats, []string{"c"}, now); got.Servers != 1 || got.StoreWarnings != nil {
		t.Errorf("pod without warnings: %+v", got)
	}
	if got := connections.Summarize(stats, []string{"stale"}, now); got.Servers != 0 {
		t.Errorf("only stale stats: %+v, want no server", got)
	}
}

func TestServerStatsJSON(t *testing.T) {
	var s store.ServerStats
	if err := json.Unmarshal([]byte(`{"connections":4,"updated_unix_ms":5,"store_warnings":["appendonly is off"]}`), &s); err != nil {
		t.Fatal(err)
	}
	if s.Connections != 4 || !reflect.DeepEqual(s.StoreWarnings, []string{"appendonly is off"}) {
		t.Errorf("decoded %+v", s)
	}
}

func TestNewClientFollowsMode(t *testing.T) {
	spec := func(mode v1alpha1.RedisMode) v1alpha1.RedisSpec {
		return v1alpha1.RedisSpec{Mode: mode, Addresses: []string{"127.0.0.1:1", "127.0.0.1:2"}, MasterName: "m"}
	}
	// Several addresses alone must not turn standalone into a cluster client.
	for mode, wantAddr := range map[v1alpha1.RedisMode]string{
		v1alpha1.RedisStandalone: "127.0.0.1:1",
		v1alpha1.RedisSentinel:   "FailoverClient", // go-redis's marker for a Sentinel-backed client
	} {
		c, ok := connections.NewClient(spec(mode), "pw").(*redis.Client)
		if !ok || c.Options().Addr != wantAddr || c.Options().Password != "pw" {
			t.Errorf("%s: got %T", mode, c)
		}
		if c != nil {
			_ = c.Close()
		}
	}
	c, ok := connections.NewClient(spec(v1alpha1.RedisCluster), "pw").(*redis.ClusterClient)
	if !ok {
		t.Fatalf("cluster: got %T", c)
	}
	_ = c.Close()
}

func TestClientsReuseAndReplace(t *testing.T) {
	var cs connections.Clients
	spec := v1alpha1.RedisSpec{Addresses: []string{"127.0.0.1:1"}}
	a := cs.Get("ns/a", spec, "pw")
	if cs.Get("ns/a", spec, "pw") != a {
		t.Fatal("same spec and password: want the same client")
	}
	b := cs.Get("ns/b", spec, "pw")
	if b == a {
		t.Fatal("another SocketCluster shares a client")
	}
	a2 := cs.Get("ns/a", spec, "rotated")
	if a2 == a {
		t.Fatal("new password: want a new client")
	}
	closed := func(c redis.UniversalClient) bool {
		return errors.Is(c.Ping(context.Background()).Err(), redis.ErrClosed)
	}
	if !closed(a) {
		t.Error("the replaced client is still open")
	}
	cs.Forget("ns/a")
	if !closed(a2) {
		t.Error("a forgotten SocketCluster's client is still open")
	}
	if closed(b) {
		t.Error("forgetting one SocketCluster closed another's client")
	}
	cs.Forget("ns/b")
}
