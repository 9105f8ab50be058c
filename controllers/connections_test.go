package controllers_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

func TestConnectionsFromRedis(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	rs := redistest.Start(t)
	addr, rdb := rs.Addr, rs.Client()

	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, `
metadata: {name: edge}
spec:
  redis: {addresses: ["`+addr+`"], keyPrefix: t1}
  auth: {deviceKeySecretRef: {name: device-key, key: key}}
`)
	// envtest schedules nothing: create the pods the Deployment would.
	createPods(t, c, ns, resources.SelectorLabels(sc), "edge-a", "edge-b", "edge-c")
	now := time.Now()
	publish := func(pod string, conns int64, updated time.Time) {
		publishStats(t, rdb, "t1", pod, store.ServerStats{Connections: conns, UpdatedUnixMs: updated.UnixMilli()})
	}
	publish("edge-a", 100, now)
	publish("edge-b", 20, now)
	publish("edge-c", 7000, now.Add(-time.Minute)) // stale: a stuck pod
	publish("edge-gone", 5000, now)                // no such pod any more
	if err := rdb.HSet(ctx, store.ServersKey("other"), "edge-a", `{"connections":1}`).Err(); err != nil {
		t.Fatal(err)
	}

	// The first reconcile may have read Redis before the stats were
	// published; touching the SocketCluster triggers another at once.
	touch(t, c, ns, "edge")
	var observedAt metav1.Time
	eventually(t, "connections", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		if sc.Status.Connections != 120 || sc.Status.ConnectionsObservedAt == nil {
			return fmt.Errorf("connections %d at %v, want 120", sc.Status.Connections, sc.Status.ConnectionsObservedAt)
		}
		observedAt = *sc.Status.ConnectionsObservedAt
		return conditionIs(sc, v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonAsExpected)
	})

	// Redis gone: the last count stays, and the status says why it is old.
	rs.Kill()
	touch(t, c, ns, "edge")
	eventually(t, "redis unreachable", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		return conditionIs(sc, v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonRedisUnreachable)
	})
	// The time is the last read's: a reconcile may have read Redis again
	// after the one above, before the kill, but none after the reconcile
	// that found Redis gone (reconciles of a SocketCluster run one at a
	// time).
	at, degraded := sc.Status.ConnectionsObservedAt, meta.FindStatusCondition(sc.Status.Conditions, v1alpha1.ConditionDegraded)
	if sc.Status.Connections != 120 || at == nil || at.Before(&observedAt) || degraded.LastTransitionTime.Before(at) {
		t.Errorf("connections %d at %v after Redis went away (at %v), want the last value 120, read at or after %v",
			sc.Status.Connections, at, degraded.LastTransitionTime, observedAt)
	}
}

func TestStoreWarningsFromRedis(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	rs := redistest.Start(t)
	addr, rdb := rs.Addr, rs.Client()

	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, `
metadata: {name: edge}
spec:
  redis: {addresses: ["`+addr+`"], keyPrefix: t2}
  auth: {deviceKeySecretRef: {name: device-key, key: key}}
`)
	createPods(t, c, ns, resources.SelectorLabels(sc), "edge-a", "edge-b")
	storeDurable := func(status metav1.ConditionStatus, reason string, msg ...string) func() error {
		return func() error {
			if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
				return err
			}
			if err := conditionIs(sc, v1alpha1.ConditionStoreDurable, status, reason); err != nil {
				return err
			}
			got := meta.FindStatusCondition(sc.Status.Conditions, v1alpha1.ConditionStoreDurable).Message
			for _, m := range msg {
				if !strings.Contains(got, m) {
					return fmt.Errorf("message %q lacks %q", got, m)
				}
			}
			return nil
		}
	}
	// Nothing published yet.
	eventually(t, "no stats", storeDurable(metav1.ConditionUnknown, v1alpha1.ReasonNoServerStats))

	aof := "appendonly is off: a Redis restart loses every unacknowledged message"
	lru := "maxmemory-policy allkeys-lru can evict sessions"
	publish := func(pod string, warnings ...string) {
		t.Helper()
		v, _ := json.Marshal(store.ServerStats{Connections: 1, UpdatedUnixMs: time.Now().UnixMilli(), StoreWarnings: warnings})
		if err := rdb.HSet(ctx, store.ServersKey("t2"), pod, v).Err(); err != nil {
			t.Fatal(err)
		}
	}
	publish("edge-a", aof, lru)
	publish("edge-b", aof)
	// The raw JSON the servers write, as the operator reads it.
	raw, err := rdb.HGet(ctx, store.ServersKey("t2"), "edge-b").Result()
	if err != nil || !strings.Contains(raw, `"store_warnings":["appendonly is off`) {
		t.Fatalf("stats JSON %s (%v), want a store_warnings field", raw, err)
	}
	touch(t, c, ns, "edge")
	eventually(t, "store may lose data", storeDurable(metav1.ConditionFalse, v1alpha1.ReasonStoreMayLoseData, aof, lru))
	if sc.Status.Connections != 2 {
		t.Errorf("connections %d, want 2", sc.Status.Connections)
	}

	// Redis made durable: the servers stop warning.
	publish("edge-a")
	publish("edge-b")
	touch(t, c, ns, "edge")
	eventually(t, "store durable", storeDurable(metav1.ConditionTrue, v1alpha1.ReasonStoreDurable))
}

// Each pod's pod-deletion-cost follows its connection count, so that a
// scale-down removes the least loaded pods first.
func TestDeletionCostFollowsConnections(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	rs := redistest.Start(t)
	addr, rdb := rs.Addr, rs.Client()
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, `
metadata: {name: edge}
spec:
  redis: {addresses: ["`+addr+`"], keyPrefix: dc}
  auth: {deviceKeySecretRef: {name: device-key, key: key}}
`)
	createPods(t, c, ns, resources.SelectorLabels(sc), "edge-a", "edge-b", "edge-c")
	publish := func(pod string, conns int64) {
		publishStats(t, rdb, "dc", pod, store.ServerStats{Connections: conns, UpdatedUnixMs: time.Now().UnixMilli()})
	}
	costs := func(want map[string]string) func() error {
		return func() error {
			for name, cost := range want {
				p := &corev1.Pod{}
				if err := c.Get(ctx, key(ns, name), p); err != nil {
					return err
				}
				if got, ok := p.Annotations[resources.AnnotationPodDeletionCost]; got != cost || (cost == "" && ok) {
					return fmt.Errorf("pod %s: deletion cost %q, want %q", name, got, cost)
				}
			}
			return nil
		}
	}
	publish("edge-a", 900)
	publish("edge-b", 40)
	touch(t, c, ns, "edge")
	// edge-c published nothing: no cost rather than a guess.
	eventually(t, "deletion costs", costs(map[string]string{"edge-a": "900", "edge-b": "40", "edge-c": ""}))
	publish("edge-a", 3)  // emptied, e.g. by a shed
	publish("edge-b", 45) // within 10 connections: not rewritten
	touch(t, c, ns, "edge")
	eventually(t, "deletion costs after a change", costs(map[string]string{"edge-a": "3", "edge-b": "40"}))
}

// spec.autoscaling sizes the Deployment by the connections the pods
// report: up at once, down only after the stabilization window.
func TestAutoscalingOnConnections(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	rs := redistest.Start(t)
	addr, rdb := rs.Addr, rs.Client()
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, `
metadata: {name: edge}
spec:
  replicas: 3
  redis: {addresses: ["`+addr+`"], keyPrefix: as}
  auth: {deviceKeySecretRef: {name: device-key, key: key}}
  autoscaling: {minReplicas: 2, maxReplicas: 6, targetConnectionsPerPod: 100, scaleDownStabilization: 1h}
`)
	createPods(t, c, ns, resources.SelectorLabels(sc), "edge-a", "edge-b")
	publish := func(pod string, conns int64) {
		publishStats(t, rdb, "as", pod, store.ServerStats{Connections: conns, UpdatedUnixMs: time.Now().UnixMilli()})
	}
	replicas := func(want int32) func() error {
		return func() error {
			d := &appsv1.Deployment{}
			if err := c.Get(ctx, key(ns, "edge"), d); err != nil {
				return err
			}
			if *d.Spec.Replicas != want {
				return fmt.Errorf("Deployment replicas %d, want %d", *d.Spec.Replicas, want)
			}
			got := &v1alpha1.SocketCluster{}
			if err := c.Get(ctx, key(ns, "edge"), got); err != nil {
				return err
			}
			if as := got.Status.Autoscaling; as == nil || as.Replicas != want {
				return fmt.Errorf("status.autoscaling %+v, want %d replicas", as, want)
			}
			return nil
		}
	}
	publish("edge-a", 300)
	publish("edge-b", 150)
	touch(t, c, ns, "edge")
	eventually(t, "scaled up to ceil(450/100)", replicas(5))

	publish("edge-a", 100)
	publish("edge-b", 50)
	touch(t, c, ns, "edge")
	// Not at once: the window starts (an hour: the state holds while the
	// test looks at it).
	eventually(t, "stabilization window", func() error {
		got := &v1alpha1.SocketCluster{}
		if err := c.Get(ctx, key(ns, "edge"), got); err != nil {
			return err
		}
		if as := got.Status.Autoscaling; as == nil || as.LowSince == nil || as.Replicas != 5 || as.Recommendation != 2 {
			return fmt.Errorf("status.autoscaling %+v, want 5 replicas, 2 recommended, low since set", as)
		}
		return nil
	})
	// A window that has passed already: down, on the next reconcile (the
	// counts stay fresh).
	patchSpec(t, c, ns, "edge", `{"autoscaling":{"scaleDownStabilization":"1s"}}`)
	eventually(t, "scaled down to 2", func() error {
		publish("edge-a", 100)
		publish("edge-b", 50)
		return replicas(2)()
	})
}

// createPods makes the pods a Deployment would, with labels: envtest
// schedules nothing.
func createPods(t *testing.T, c client.Client, ns string, labels map[string]string, names ...string) {
	t.Helper()
	for _, name := range names {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "socketserver", Image: "x"}}},
		}
		if err := c.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
}

// publishStats writes a pod's stats under the key prefix, as its server does.
func publishStats(t *testing.T, rdb *redis.Client, prefix, pod string, st store.ServerStats) {
	t.Helper()
	v, _ := json.Marshal(st)
	if err := rdb.HSet(ctx, store.ServersKey(prefix), pod, v).Err(); err != nil {
		t.Fatal(err)
	}
}
