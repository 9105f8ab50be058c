package redistest

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of three masters, each a real redis-server.
type Cluster struct {
	Nodes []*Server
	Addrs []string
}

// StartCluster runs three cluster-enabled nodes and joins them with
// redis-cli --cluster create, so tests cover the hash-tag and sharded
// pub/sub paths for real.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	c := &Cluster{}
	for i := 0; i < 3; i++ {
		s := start(t, false, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000")
		c.Nodes = append(c.Nodes, s)
		c.Addrs = append(c.Addrs, s.Addr)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redis-cli not found (apt-get install redis-tools): %v", err)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	// Every node must see the cluster as ok: a node that has not yet heard
	// of the others answers CLUSTERDOWN to the commands it is sent.
	rdb := c.Client()
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range c.Nodes {
		node := n.Client()
		for {
			info, err := node.ClusterInfo(context.Background()).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster node %s did not become ok: %v %s", n.Addr, err, info)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for rdb.Set(context.Background(), "probe", "1", 0).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatal("cluster does not take writes")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

// Client returns a go-redis ClusterClient, closed when the test ends.
func (c *Cluster) Client() *redis.ClusterClient {
	t := c.Nodes[0].t
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs, DialTimeout: time.Second,
		ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}
