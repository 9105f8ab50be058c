//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

// TestAutoscaleRebalance: a SocketCluster autoscaled on connections
// (target 30% of E2E_DEVICES per pod, 2 to 4 pods) gets half the devices,
// then the other half: it scales from 2 to 4 pods, and the operator sheds
// connections from the full pods until every pod holds its share (within
// 20% of the mean), without losing a message. Then maxReplicas falls to
// 3: the operator drains the least loaded pod before the Deployment loses
// it, so only its devices reconnect, each once.
func TestAutoscaleRebalance(t *testing.T) {
	nDevices := envInt(t, "E2E_DEVICES", 2000)
	ctx := context.Background()
	ns := namespace(t, "autoscale")
	tagA, _ := imageTags(t)
	redisIP := startRedis(t, ctx, ns)
	redisAddr := fmt.Sprintf("%s:%d", redisIP, redisPort)
	installOperator(t, ns, tagA)
	const name = "as"
	target := nDevices * 3 / 10
	manifest := fmt.Sprintf(`apiVersion: %s
kind: SocketCluster
metadata:
  name: %s
  namespace: %s
spec:
  replicas: 2
  image: %s
  imagePullPolicy: Never
  redis:
    addresses: [%q]
  auth:
    insecureNoAuth: true
  drain:
    timeout: 20s
    jitter: 2s
  autoscaling:
    minReplicas: 2
    maxReplicas: 4
    targetConnectionsPerPod: %d
    scaleDownStabilization: 10m
`, v1alpha1.GroupVersion.String(), name, ns, image(tagA), redisAddr, target)
	kubectlApply(t, manifest)
	kubectl(t, "-n", ns, "wait", "--for=condition=Available", "socketcluster/"+name, "--timeout=5m")
	apiToken := generatedAPIToken(t, ctx, ns, name)

	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	srv := &servers{}
	selector := map[string]string{resources.LabelName: resources.AppName, resources.LabelInstance: name}
	go srv.refresh(loadCtx, ns, selector)
	devs := make([]*device, nDevices)
	var running sync.WaitGroup
	connect := func(from, to int) {
		for i := from; i < to; i++ {
			devs[i] = newDevice(fmt.Sprintf("%s-dev-%05d", name, i), srv, sseOrTCP(i))
			running.Add(1)
			go func() { defer running.Done(); devs[i].client.Run(loadCtx) }()
		}
		eventually(t, 5*time.Minute, "devices connected", func() error { return allConnected(devs[:to]) })
	}
	connect(0, nDevices/2)
	connect(nDevices/2, nDevices)
	start := time.Now()
	sent, stopBackends := startBackends(loadCtx, devs, srv, apiToken, 4)

	var before, after []int64
	eventually(t, 5*time.Minute, "4 pods, each counted", func() error {
		sc, err := getSocketCluster(ns, name)
		if err != nil {
			return err
		}
		if sc.Status.Autoscaling == nil || sc.Status.Autoscaling.Replicas != 4 || sc.Status.ReadyReplicas != 4 {
			return fmt.Errorf("status.autoscaling %+v, ready %d", sc.Status.Autoscaling, sc.Status.ReadyReplicas)
		}
		before = podConnections(sc)
		if len(before) != 4 {
			return fmt.Errorf("pod counts %v", before)
		}
		return nil
	})
	scaled := time.Since(start)
	eventually(t, 5*time.Minute, "pods within 20% of the mean", func() error {
		sc, err := getSocketCluster(ns, name)
		if err != nil {
			return err
		}
		after = podConnections(sc)
		var sum int64
		for _, c := range after {
			sum += c
		}
		if len(after) != 4 || sum != int64(nDevices) {
			return fmt.Errorf("pod counts %v (sum %d)", after, sum)
		}
		mean := float64(sum) / 4
		if float64(after[0]) < mean*0.8 || float64(after[3]) > mean*1.2 {
			return fmt.Errorf("pod counts %v, mean %.0f", after, mean)
		}
		return nil
	})
	balanced := time.Since(start)
	sd := scaleDownOnePod(t, ns, name, devs)
	stopBackends()
	eventually(t, 5*time.Minute, "all devices connected", func() error { return allConnected(devs) })
	eventually(t, 5*time.Minute, "all messages delivered", func() error { return allReceived(devs) })
	stopLoad()
	running.Wait()
	reconnects, lost := 0, 0
	for _, d := range devs {
		reconnects += len(d.resumes)
		if err := d.checkDelivery(); err != nil {
			t.Error(err)
			lost++
		}
	}
	t.Logf("AUTOSCALE devices=%d target-per-pod=%d scaled-to-4-after=%s pods-before-rebalance=%v balanced-after=%s pods-after=%v "+
		"reconnects-before-the-scale-down=%d messages-accepted=%d devices-with-lost-messages=%d",
		nDevices, target, scaled.Round(time.Second), before, balanced.Round(time.Second), after, reconnects-sd.reconnects, sent.accepted.Load(), lost)
	t.Logf("SCALEDOWN maxReplicas 4->3: pods-before=%v pods-after=%v removed=%s (%d connections, least loaded %d) devices-moved=%d reconnects=%d took=%s devices-with-lost-messages=%d",
		sd.before, sd.after, sd.removed, sd.removedConns, sd.before[0], sd.moved, sd.reconnects, sd.took.Round(time.Second), lost)
}

// scaleDown is what lowering maxReplicas did.
type scaleDown struct {
	before, after     []int64 // pod counts, sorted
	removed           string
	removedConns      int64
	moved, reconnects int
	took              time.Duration
}

// scaleDownOnePod lowers autoscaling.maxReplicas from 4 to 3 and checks
// that exactly the devices of the pod that goes reconnect, each once.
func scaleDownOnePod(t *testing.T, ns, name string, devs []*device) scaleDown {
	t.Helper()
	var res scaleDown
	sc, err := getSocketCluster(ns, name)
	if err != nil {
		t.Fatal(err)
	}
	res.before = podConnections(sc)
	podsBefore := map[string]int64{}
	for _, p := range sc.Status.Pods {
		if p.Connections != nil {
			podsBefore[p.Name] = *p.Connections
		}
	}
	on := make([]string, len(devs))
	resumes := make([]int, len(devs))
	for i, d := range devs {
		d.mu.Lock()
		on[i], resumes[i] = d.server, len(d.resumes)
		d.mu.Unlock()
	}
	start := time.Now()
	kubectl(t, "-n", ns, "patch", "socketcluster", name, "--type=merge", "-p", `{"spec":{"autoscaling":{"maxReplicas":3}}}`)
	eventually(t, 5*time.Minute, "3 pods, the scale-down over, every device connected", func() error {
		sc, err := getSocketCluster(ns, name)
		if err != nil {
			return err
		}
		res.after = podConnections(sc)
		var sum int64
		for _, c := range res.after {
			sum += c
		}
		if len(sc.Status.Pods) != 3 || sc.Status.ReadyReplicas != 3 || len(res.after) != 3 || sum != int64(len(devs)) {
			return fmt.Errorf("pods %d (ready %d), counts %v", len(sc.Status.Pods), sc.Status.ReadyReplicas, res.after)
		}
		for _, c := range sc.Status.Conditions {
			if c.Type == v1alpha1.ConditionDraining && c.Status != "False" {
				return fmt.Errorf("Draining %s: %s", c.Reason, c.Message)
			}
		}
		for _, p := range sc.Status.Pods {
			delete(podsBefore, p.Name)
		}
		if len(podsBefore) != 1 {
			return fmt.Errorf("pods gone: %v", podsBefore)
		}
		return allConnected(devs)
	})
	res.took = time.Since(start)
	for pod, n := range podsBefore {
		res.removed, res.removedConns = pod, n
	}
	for i, d := range devs {
		d.mu.Lock()
		got := len(d.resumes) - resumes[i]
		d.mu.Unlock()
		res.reconnects += got
		switch {
		case on[i] == res.removed && got != 1:
			t.Errorf("device %s was on the removed pod %s and reconnected %d times, want once", d.name, res.removed, got)
		case on[i] != res.removed && got != 0:
			t.Errorf("device %s was on pod %s, which stays, and reconnected %d times, want never", d.name, on[i], got)
		}
		if on[i] == res.removed {
			res.moved++
		}
	}
	// Within 10 connections: the operator picked from counts a few
	// seconds apart from the status read here.
	if res.removedConns > res.before[0]+10 {
		t.Errorf("the removed pod %s held %d connections, not the fewest (%v)", res.removed, res.removedConns, res.before)
	}
	return res
}

func getSocketCluster(ns, name string) (*v1alpha1.SocketCluster, error) {
	out := kubectlNoFail("-n", ns, "get", "socketcluster", name, "-o", "json")
	sc := &v1alpha1.SocketCluster{}
	if err := json.Unmarshal([]byte(out), sc); err != nil {
		return nil, fmt.Errorf("kubectl get socketcluster: %w (%.200s)", err, out)
	}
	return sc, nil
}

// podConnections are the counts of status.pods that have one, sorted.
func podConnections(sc *v1alpha1.SocketCluster) []int64 {
	var out []int64
	for _, p := range sc.Status.Pods {
		if p.Connections != nil {
			out = append(out, *p.Connections)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
