package store

import (
	"context"
	"encoding/json"

	"github.com/redis/go-redis/v9"
)

// ServerStats is what each socketserver publishes about itself, so that the
// operator can report live connection counts without talking to every pod.
type ServerStats struct {
	Connections   int64 `json:"connections"`
	Draining      bool  `json:"draining"`
	UpdatedUnixMs int64 `json:"updated_unix_ms"`
	// StoreWarnings say how the store can lose data the server relies on,
	// one sentence each, e.g. "appendonly is off: a Redis restart loses
	// every unacknowledged message" or "maxmemory-policy allkeys-lru can
	// evict sessions". Empty when the server knows of none. The operator
	// shows them in the SocketCluster's StoreDurable condition.
	StoreWarnings []string `json:"store_warnings,omitempty"`
}

// ServersKey is the Redis hash (field = server name, value = ServerStats JSON)
// where servers publish their stats every few seconds.
func ServersKey(prefix string) string { return prefix + ":servers" }

// ReadServerStats returns the stats every server published under prefix.
// Entries are never expired by Redis; callers judge freshness by UpdatedUnixMs.
func ReadServerStats(ctx context.Context, rdb redis.UniversalClient, prefix string) (map[string]ServerStats, error) {
	m, err := rdb.HGetAll(ctx, ServersKey(prefix)).Result()
	if err != nil {
		return nil, err
	}
	out := make(map[string]ServerStats, len(m))
	for name, v := range m {
		var s ServerStats
		if json.Unmarshal([]byte(v), &s) == nil {
			out[name] = s
		}
	}
	return out, nil
}
