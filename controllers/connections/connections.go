// Package connections reads the live connection counts that socketservers
// publish into Redis, so that the operator never has to call every pod.
package connections

import (
	"context"
	"crypto/tls"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// MaxAge is how old a pod's published stats may be and still count: servers
// refresh them every 5s, so older entries belong to dead or stuck pods.
const MaxAge = 30 * time.Second

// NewClient connects to the cluster's Redis as its servers do. Timeouts are
// short: a status refresh must not hold up the reconcile loop.
func NewClient(spec v1alpha1.RedisSpec, password string) redis.UniversalClient {
	o := &redis.UniversalOptions{
		Addrs:        spec.Addresses,
		MasterName:   spec.MasterName,
		Password:     password,
		DialTimeout:  2 * time.Second,
		ReadTimeout:  2 * time.Second,
		WriteTimeout: 2 * time.Second,
		// One attempt per refresh: the next one comes in StatusInterval.
		MaxRetries:      -1,
		DialerRetries:   1,
		DisableIdentity: true,
	}
	if spec.TLS {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	switch spec.Mode {
	case v1alpha1.RedisSentinel:
		return redis.NewFailoverClient(o.Failover())
	case v1alpha1.RedisCluster:
		return redis.NewClusterClient(o.Cluster())
	default:
		return redis.NewClient(o.Simple())
	}
}

// Report is what the fresh stats of a SocketCluster's pods say.
type Report struct {
	// Connections is the sum of the pods' open connections.
	Connections int64
	// Servers is how many of the pods published fresh stats.
	Servers int
	// StoreWarnings are the distinct warnings those pods reported about
	// their store, sorted.
	StoreWarnings []string
	// Pods are the fresh stats of each pod that has some.
	Pods map[string]store.ServerStats
}

// Read reads the stats published under prefix and summarizes those of the
// given pods.
func Read(ctx context.Context, rdb redis.UniversalClient, prefix string, pods []string, now time.Time) (Report, error) {
	stats, err := store.ReadServerStats(ctx, rdb, prefix)
	if err != nil {
		return Report{}, err
	}
	return Summarize(stats, pods, now), nil
}

// Summarize adds up the fresh stats of the given pods. Entries of other
// pods (deleted ones, or another cluster sharing the prefix) and entries
// older than MaxAge do not count.
func Summarize(stats map[string]store.ServerStats, pods []string, now time.Time) Report {
	var r Report
	for _, p := range pods {
		s, ok := stats[p]
		if !ok || now.Sub(time.UnixMilli(s.UpdatedUnixMs)) > MaxAge {
			continue
		}
		r.Servers++
		r.Connections += s.Connections
		if r.Pods == nil {
			r.Pods = map[string]store.ServerStats{}
		}
		r.Pods[p] = s
		for _, w := range s.StoreWarnings {
			if !slices.Contains(r.StoreWarnings, w) {
				r.StoreWarnings = append(r.StoreWarnings, w)
			}
		}
	}
	slices.Sort(r.StoreWarnings)
	return r
}

// Sum adds up the connections of the fresh stats of the given pods.
func Sum(stats map[string]store.ServerStats, pods []string, now time.Time) int64 {
	return Summarize(stats, pods, now).Connections
}
