package connections

import (
	"encoding/json"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// Clients keeps one Redis client per SocketCluster, so that a status
// refresh reuses a connection instead of dialing and authenticating every
// time. A changed Redis spec or password replaces the client. The zero
// value is ready to use.
type Clients struct {
	mu sync.Mutex
	m  map[string]cachedClient
}

type cachedClient struct {
	config string
	rdb    redis.UniversalClient
}

// Get returns the client of the SocketCluster key for spec and password.
func (c *Clients) Get(key string, spec v1alpha1.RedisSpec, password string) redis.UniversalClient {
	b, _ := json.Marshal(spec)
	config := string(b) + "\x00" + password
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.m[key]; ok {
		if cur.config == config {
			return cur.rdb
		}
		_ = cur.rdb.Close()
	}
	if c.m == nil {
		c.m = map[string]cachedClient{}
	}
	rdb := NewClient(spec, password)
	c.m[key] = cachedClient{config: config, rdb: rdb}
	return rdb
}

// Forget closes the client of a SocketCluster that is gone.
func (c *Clients) Forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.m[key]; ok {
		_ = cur.rdb.Close()
		delete(c.m, key)
	}
}
