//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

// TestRolloutReconnects measures what a pure image rollout costs the
// devices with each rollout strategy: E2E_DEVICES devices (default 2000;
// one in sseShare over SSE) connected through the public Service's ready
// endpoints (as an L4 load balancer sends them), backends sending to them,
// then the image changes and nothing else happens. It prints reconnects per
// device, the connections that landed on pods of the old image after the
// Service switched (ReconnectOnce) or after the patch, and the rollout's
// time; every accepted message must arrive and every device be back.
// ReconnectOnce must move each device at most about once (≤ 1.05) and send
// none to an old pod after the switch.
func TestRolloutReconnects(t *testing.T) {
	for _, f := range []string{"charts/socketcluster-operator/Chart.yaml", "cmd/manager/main.go"} {
		if _, err := os.Stat(filepath.Join(cluster.repo, f)); err != nil {
			t.Skipf("needs the operator chart and manager (%s is missing)", f)
		}
	}
	nDevices := envInt(t, "E2E_DEVICES", 2000)
	ctx := context.Background()
	ns := namespace(t, "rollout")
	tagA, tagB := imageTags(t)
	redisIP := startRedis(t, ctx, ns)
	redisAddr := fmt.Sprintf("%s:%d", redisIP, redisPort)
	installOperator(t, ns, tagA)

	for _, strategy := range []v1alpha1.RolloutStrategy{v1alpha1.RolloutSurge, v1alpha1.RolloutReconnectOnce} {
		name := "ro-" + strings.ToLower(string(strategy))
		t.Run(string(strategy), func(t *testing.T) {
			measureRollout(t, ctx, ns, name, strategy, nDevices, redisAddr, image(tagA), image(tagB))
		})
	}
}

func measureRollout(t *testing.T, ctx context.Context, ns, name string, strategy v1alpha1.RolloutStrategy, nDevices int, redisAddr, imgA, imgB string) {
	// The ReconnectOnce drain shares 150 GOAWAYs/s among the old pods:
	// 2,000 devices leave in about 13 s, within the 20 s drain timeout.
	clusterRate := ""
	if strategy == v1alpha1.RolloutReconnectOnce {
		clusterRate = "\n    clusterRate: 150"
	}
	manifest := fmt.Sprintf(`apiVersion: %s
kind: SocketCluster
metadata:
  name: %s
  namespace: %s
spec:
  replicas: 3
  image: %s
  imagePullPolicy: Never
  redis:
    addresses: [%q]
    keyPrefix: %s
  auth:
    insecureNoAuth: true
  rollout:
    strategy: %s
  drain:
    timeout: 20s
    jitter: 2s%s
`, v1alpha1.GroupVersion.String(), name, ns, imgA, redisAddr, name, strategy, clusterRate)
	kubectlApply(t, manifest)
	defer kubectlNoFail("-n", ns, "delete", "socketcluster", name, "--wait=true", "--timeout=2m")
	kubectl(t, "-n", ns, "wait", "--for=condition=Available", "socketcluster/"+name, "--timeout=5m")
	apiToken := generatedAPIToken(t, ctx, ns, name)

	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	srv := &servers{}
	selector := map[string]string{resources.LabelName: resources.AppName, resources.LabelInstance: name}
	go srv.refresh(loadCtx, ns, selector)
	devs := make([]*device, nDevices)
	for i := range devs {
		devs[i] = newDevice(fmt.Sprintf("%s-dev-%05d", name, i), srv, sseOrTCP(i))
	}
	sampleStart, sampled := devicesPerPod(loadCtx, devs)
	var running sync.WaitGroup
	for _, d := range devs {
		running.Add(1)
		go func() { defer running.Done(); d.client.Run(loadCtx) }()
	}
	eventually(t, 5*time.Minute, "all devices connected", func() error { return allConnected(devs) })
	// The rollout starts from even pods: devices that connected while not
	// every pod was ready are shed first, and their moves are not the
	// rollout's.
	kubectl(t, "-n", ns, "wait", "--for=condition=Balanced=True", "socketcluster/"+name, "--timeout=3m")
	eventually(t, 5*time.Minute, "all devices connected", func() error { return allConnected(devs) })
	sent, stopBackends := startBackends(loadCtx, devs, srv, apiToken, 4)
	time.Sleep(5 * time.Second) // traffic before the rollout
	before := 0
	for _, d := range devs {
		d.mu.Lock()
		before += len(d.resumes)
		d.mu.Unlock()
	}

	start := time.Now()
	kubectl(t, "-n", ns, "patch", "socketcluster", name, "--type=merge", "-p", `{"spec":{"image":"`+imgB+`"}}`)
	eventually(t, 10*time.Minute, "rollout to "+imgB, func() error { return rolledOutTo(ctx, ns, name, imgB) })
	rollout := time.Since(start)
	eventually(t, 5*time.Minute, "all devices connected again", func() error { return allConnected(devs) })
	kubectl(t, "-n", ns, "wait", "--for=condition=Progressing=False", "socketcluster/"+name, "--timeout=2m")
	stopBackends()
	eventually(t, 5*time.Minute, "all messages delivered", func() error { return allReceived(devs) })
	stopLoad()
	running.Wait()

	reconnects := -before
	lost := 0
	for _, d := range devs {
		reconnects += len(d.resumes)
		if err := d.checkDelivery(); err != nil {
			t.Error(err)
			lost++
		}
	}
	srv.mu.Lock()
	switchedAt := srv.switchedAt
	srv.mu.Unlock()
	afterPatch := srv.landedOn(imgA, start)
	writeTimeline(t, "rollout-"+strings.ToLower(string(strategy)), name, fmt.Sprintf("%s rollout: %d devices, 3 pods", strategy, nDevices),
		sampleStart, sampled(), map[string]time.Time{"image patched": start, "Service switched": switchedAt})
	perDevice := float64(reconnects) / float64(nDevices)
	t.Logf("ROLLOUT strategy=%s devices=%d reconnects=%d per-device=%.3f hellos-on-old-image-after-patch=%d rollout=%s "+
		"messages-accepted=%d devices-with-lost-messages=%d",
		strategy, nDevices, reconnects, perDevice, afterPatch, rollout.Round(time.Millisecond), sent.accepted.Load(), lost)
	if strategy != v1alpha1.RolloutReconnectOnce {
		return
	}
	if switchedAt.Before(start) {
		t.Fatalf("never saw the Service switch to the new revision")
	}
	afterSwitch := srv.landedOn(imgA, switchedAt)
	t.Logf("ROLLOUT strategy=%s hellos-on-old-revision-after-switch=%d (switch %s after the patch)",
		strategy, afterSwitch, switchedAt.Sub(start).Round(time.Millisecond))
	if afterSwitch != 0 {
		t.Errorf("%d HELLOs reached pods of the old revision after the Service switched, want 0", afterSwitch)
	}
	if perDevice > 1.05 {
		t.Errorf("%.3f reconnects per device, want at most 1.05: devices moved more than once", perDevice)
	}
}
